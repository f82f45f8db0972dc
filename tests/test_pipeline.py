import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_synth
from kerasbn.data import checks, pipeline, records


def _take(dataset, n):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(n)]


def test_train_batches_shapes_dtypes_normalisation(small_data):
    manifest = records.read_manifest(small_data)
    batches = _take(pipeline.train_dataset(small_data, manifest, 16, seed=0), 20)
    for x, y in batches:
        assert x.shape == (16, 50, 50, 1) and x.dtype == np.float32
        assert y.shape == (16,) and y.dtype == np.int32
        assert ((0 <= y) & (y < 6)).all()
    pixels = np.concatenate([x for x, _ in batches])
    assert abs(pixels.mean()) < 0.15 and abs(pixels.std() - 1) < 0.15


@pytest.mark.slow
def test_train_pipeline_is_seeded(small_data):
    manifest = records.read_manifest(small_data)
    make = lambda seed, step=0: _take(pipeline.train_dataset(
        small_data, manifest, 16, seed=seed, crop_pad=3, mirror=True, start_step=step), 12)
    a, b, c, d = make(1), make(1), make(2), make(1, step=500)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))
    assert not all(np.array_equal(ya, yd) for (_, ya), (_, yd) in zip(a, d))


@pytest.mark.slow
def test_a_resumed_train_pipeline_continues_the_same_stream(small_data):
    manifest = records.read_manifest(small_data)  # 90 training records: 5.6 batches an epoch
    make = lambda step, n: _take(pipeline.train_dataset(
        small_data, manifest, 16, seed=3, crop_pad=2, mirror=True, shuffle_buffer=32,
        start_step=step), n)
    whole = make(0, 20)
    labels = np.concatenate([y for _, y in whole[:17]])
    for epoch in range(3):  # each epoch holds every record once
        assert np.bincount(labels[epoch * 90:(epoch + 1) * 90], minlength=6).tolist() == [15] * 6
    for step in (1, 5, 6, 11, 17):  # within the first epoch, across one and two boundaries
        for (xw, yw), (xr, yr) in zip(whole[step:], make(step, 3)):
            np.testing.assert_array_equal(yw, yr)
            np.testing.assert_array_equal(xw, xr)


def test_train_pipeline_draws_classes_in_proportion(small_data):
    manifest = records.read_manifest(small_data)
    count = manifest.splits["train"].count
    dataset = pipeline.train_dataset(small_data, manifest, count, seed=0, shuffle_buffer=64)
    labels = np.concatenate([y for _, y in _take(dataset, 20)])
    counts = np.bincount(labels, minlength=6)
    assert counts.sum() == 20 * count
    assert np.abs(counts - 20 * 15).max() <= 20 * 15 * 0.05, counts


def test_test_pass_yields_each_record_once_with_partial_batch(small_data):
    manifest = records.read_manifest(small_data)
    files = records.split_files(small_data, manifest, "test")
    direct = tf.data.TFRecordDataset(files).batch(1000).get_single_element()
    expected_images, expected_labels = records.parse_batch(direct, (50, 50), 1, "raw")
    batches = _take(pipeline.test_dataset(small_data, manifest, 7), 100)
    assert [len(y) for _, y in batches] == [7, 7, 7, 7, 2]
    images = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(labels, expected_labels.numpy())
    mean, std = manifest.mean[0], manifest.std[0]
    np.testing.assert_allclose(images * std + mean, expected_images.numpy(), atol=1e-3)


def test_test_pass_shards_by_file_across_replicas(tmp_path):
    make_synth(tmp_path, shard_size=8)
    manifest = records.read_manifest(tmp_path)
    seen = []
    for replica in range(2):
        context = tf.distribute.InputContext(2, replica, 2)
        seen += [y for _, y in _take(pipeline.test_dataset(
            str(tmp_path), manifest, 4, input_context=context), 100)]
    assert sum(len(y) for y in seen) == manifest.splits["test"].count


def test_random_crop_and_mirror_move_pixels_not_values():
    images = tf.constant(np.arange(2 * 6 * 6, dtype=np.uint8).reshape(2, 6, 6, 1))
    out = pipeline.random_crop_mirror(images, tf.constant([0, 1], tf.int64), 0, True).numpy()
    for original, flipped in zip(images.numpy(), out):
        assert (np.array_equal(flipped, original)
                or np.array_equal(flipped, original[:, ::-1]))
    for channels in (1, 3):
        batch = np.random.default_rng(channels).integers(0, 256, (4, 5, 7, channels), np.uint8)
        np.testing.assert_array_equal(pipeline.mirrored(tf.constant(batch)).numpy(),
                                      batch[:, :, ::-1])
    cropped = pipeline.random_crop_mirror(images, tf.constant([3, 4], tf.int64), 2, False)
    assert cropped.shape == (2, 6, 6, 1)
    assert set(np.unique(cropped.numpy())) <= set(np.unique(images.numpy()))


def test_png_dataset_reads_like_raw(tmp_path):
    make_synth(tmp_path / "raw")
    make_synth(tmp_path / "png", encoding="png")
    raw_m = records.read_manifest(tmp_path / "raw")
    png_m = records.read_manifest(tmp_path / "png")
    raw = _take(pipeline.test_dataset(str(tmp_path / "raw"), raw_m, 64), 10)
    png = _take(pipeline.test_dataset(str(tmp_path / "png"), png_m, 64), 10)
    for (xr, yr), (xp, yp) in zip(raw, png):
        np.testing.assert_array_equal(xr, xp)
        np.testing.assert_array_equal(yr, yp)


def test_shard_of_another_size_is_named_before_training(tmp_path):
    make_synth(tmp_path / "a")
    make_synth(tmp_path / "b", image_size=32)
    manifest = records.read_manifest(tmp_path / "a")
    name = manifest.splits["train"].files[0]
    (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    with pytest.raises(records.DataError, match=name + ": record 0 holds a 32x32x1 image"):
        checks.check_split(str(tmp_path / "a"), manifest, "train")


def _record_ends(path):
    """Byte offsets at which each record of an uncompressed TFRecord file ends."""
    data, ends, at = open(path, "rb").read(), [], 0
    while at < len(data):
        at += 12 + int.from_bytes(data[at:at + 8], "little") + 4
        ends.append(at)
    return ends


def _damaged(tmp_path, how):
    make_synth(tmp_path)
    manifest = records.read_manifest(str(tmp_path))
    path = str(tmp_path / manifest.splits["test"].files[0])
    data, ends = open(path, "rb").read(), _record_ends(path)
    if how == "truncated":
        data = data[:ends[-3]]  # exactly two records short
    elif how == "flipped":
        middle = (ends[2] + ends[3]) // 2
        data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
    _rewrite(path, data)
    return manifest, path


def _rewrite(path, data):
    """Writes a shard anew, later than its writer did (the note of a checked split goes by
    size and modification time; this test may run within the clock's resolution)."""
    before = os.stat(path).st_mtime_ns
    open(path, "wb").write(data)
    os.utime(path, ns=(before + 10 ** 7, before + 10 ** 7))


@pytest.mark.parametrize("how,message", [("truncated", "holds 28 records, manifest.json says 30"),
                                         ("flipped", "is corrupt after record 3")])
def test_a_damaged_shard_is_named_or_skipped_and_counted(tmp_path, how, message):
    manifest, path = _damaged(tmp_path, how)
    with pytest.raises(records.DataError, match=message):
        checks.check_split(str(tmp_path), manifest, "test")
    total, lost = checks.check_split(str(tmp_path), manifest, "test", skip_corrupt=True)
    assert lost == {path: 2 if how == "truncated" else 27}
    read = sum(len(y) for _, y in pipeline.test_dataset(str(tmp_path), manifest, 7,
                                                         skip_corrupt=True))
    assert read == total == manifest.splits["test"].count - lost[path]


def test_a_split_checked_whole_is_not_read_again_until_a_shard_changes(tmp_path,
                                                                        monkeypatch):
    manifest, path = _damaged(tmp_path, "none")  # written whole: a 30-record test shard
    count = manifest.splits["test"].count
    assert checks.check_split(str(tmp_path), manifest, "test") == (count, {})
    reads = []
    reader = tf.data.TFRecordDataset
    monkeypatch.setattr(pipeline.tf.data, "TFRecordDataset",
                        lambda *a, **k: reads.append(a[0]) or reader(*a, **k))
    assert checks.check_split(str(tmp_path), manifest, "test") == (count, {})
    assert reads == []
    data = bytearray(open(path, "rb").read())
    middle = (_record_ends(path)[2] + _record_ends(path)[3]) // 2
    data[middle] ^= 0xFF  # same size: only the modification time tells
    _rewrite(path, bytes(data))
    with pytest.raises(records.DataError, match="is corrupt after record 3"):
        checks.check_split(str(tmp_path), manifest, "test")
    assert reads


def test_a_split_is_checked_whole_each_time_in_a_read_only_dataset(tmp_path, monkeypatch):
    from kerasbn.data import checks
    make_synth(tmp_path)
    os.remove(tmp_path / checks.FILENAME)  # as a dataset written by another tool
    manifest = records.read_manifest(str(tmp_path))
    monkeypatch.setattr(checks.atomic, "write_json",
                        lambda *a, **k: (_ for _ in ()).throw(PermissionError("read-only")))
    count = manifest.splits["test"].count
    for _ in range(2):
        assert checks.check_split(str(tmp_path), manifest, "test") == (count, {})
    assert not (tmp_path / checks.FILENAME).exists()


def test_a_dataset_just_written_is_not_read_whole_before_its_first_run(tmp_path, folder,
                                                                       monkeypatch):
    from data_tools import convert
    make_synth(tmp_path / "synth")
    convert.build(str(folder), str(tmp_path / "built"), test_fraction=0.25,
                        log=lambda *a: None)
    reads = []
    reader = tf.data.TFRecordDataset
    monkeypatch.setattr(pipeline.tf.data, "TFRecordDataset",
                        lambda *a, **k: reads.append(a[0]) or reader(*a, **k))
    for data_dir in (str(tmp_path / "synth"), str(tmp_path / "built")):
        manifest = records.read_manifest(data_dir)
        for split in ("train", "test"):
            count = manifest.splits[split].count
            assert checks.check_split(data_dir, manifest, split) == (count, {})
    assert reads == []


def test_a_label_outside_the_classes_is_named(tmp_path):
    make_synth(tmp_path)
    manifest = records.read_manifest(str(tmp_path))
    name = manifest.splits["test"].files[0]
    with tf.io.TFRecordWriter(str(tmp_path / name)) as writer:
        for label in [0] * 7 + [99]:
            writer.write(records.encode_example(np.zeros((50, 50), np.uint8), label))
    with pytest.raises(records.DataError, match=f"{name}: record 7 has label 99, outside"):
        checks.check_split(str(tmp_path), manifest, "test")


@pytest.mark.slow
def test_train_pipeline_shards_files_across_input_pipelines(tmp_path, small_data):
    make_synth(tmp_path, shard_size=8)
    manifest = records.read_manifest(tmp_path)
    contexts = [tf.distribute.InputContext(2, i, 2) for i in range(2)]
    firsts = [_take(pipeline.train_dataset(str(tmp_path), manifest, 4, input_context=c), 1)
              for c in contexts]
    assert not np.array_equal(firsts[0][0][0], firsts[1][0][0])
    # Each worker reads its own shards: over one epoch of its own, the two read disjoint
    # records that together are the whole training split.
    assert not pipeline.shards_by_record(manifest, 2)
    counts = manifest.splits["train"].file_counts
    seen = []
    for index, context in enumerate(contexts):
        own = sum(counts[index::2])
        batches = _take(pipeline.train_dataset(str(tmp_path), manifest, 1,
                                               input_context=context), own)
        seen.append({bytes(np.round(x[0], 4)) for x, _ in batches})
        assert len(seen[-1]) == own
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == manifest.splits["train"].count


@pytest.mark.slow
def test_fewer_shards_than_workers_share_one_stream_record_by_record(tmp_path):
    # One shard, two workers: worker i takes records i, i + 2, ...; their batches k together
    # are batch k of one process reading with the global batch (same images, other order).
    make_synth(tmp_path, shard_size=10_000)
    manifest = records.read_manifest(tmp_path)
    assert pipeline.shards_by_record(manifest, 2)
    contexts = [tf.distribute.InputContext(2, i, 2) for i in range(2)]
    for start in (0, 3):
        halves = [_take(pipeline.train_dataset(str(tmp_path), manifest, 4, input_context=c,
                                               start_step=start), 2) for c in contexts]
        whole = _take(pipeline.train_dataset(str(tmp_path), manifest, 8, start_step=start), 2)
        for k in range(2):
            together = np.concatenate([halves[0][k][0], halves[1][k][0]])
            key = lambda images: sorted(map(bytes, np.round(images, 4)))
            assert key(together) == key(whole[k][0])
            assert not set(map(bytes, halves[0][k][0])) & set(map(bytes, halves[1][k][0]))


def test_rebatched_cuts_a_stream_of_uneven_blocks_into_consecutive_batches():
    sizes = [5, 0, 13, 1, 7, 16]
    stream = [f"r{k}".encode() for k in range(sum(sizes))]
    starts = np.cumsum([0] + sizes)
    blocks = tf.data.Dataset.from_generator(
        lambda: (stream[a:b] for a, b in zip(starts, starts[1:])),
        output_signature=tf.TensorSpec([None], tf.string))
    batches = [b.numpy().tolist() for b in pipeline.rebatched(blocks, 4)]
    assert batches == [stream[k:k + 4] for k in range(0, len(stream) - 3, 4)]
