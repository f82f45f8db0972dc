import hashlib
import os

import numpy as np
import pytest

from conftest import make_synth
from data_tools import synth
from kerasbn.benchmarks import separability
from kerasbn.data import records
from kerasbn.evaluation import pairs


def _digest(directory):
    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".tfrecord"):
            h.update(open(os.path.join(directory, name), "rb").read())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    make_synth(tmp_path / "a", seed=3)
    make_synth(tmp_path / "b", seed=3)
    make_synth(tmp_path / "c", seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.slow
def test_workers_write_the_bytes_one_process_does(tmp_path):
    # Two identities x 600 images: three render batches in train, so the workers' results
    # arrive out of their processes and must be written in order. RGB checks the tints too.
    built = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        built[workers] = synth.build(str(out), 2, 600, 0.25, 16, 0, "png", 100, False,
                                     holdout_identities=2, pairs=5, channels=3,
                                     workers=workers).to_dict()
        built[workers].pop("command")
    assert _digest(tmp_path / "w1") == _digest(tmp_path / "w2")
    assert built[1] == built[2]
    assert (tmp_path / "w1" / "pairs.txt").read_text() == \
        (tmp_path / "w2" / "pairs.txt").read_text()


def test_manifest_describes_the_shards(small_data):
    manifest = records.read_manifest(small_data)
    assert manifest.image_size == (50, 50) and manifest.channels == 1
    assert len(manifest.class_names) == 6
    assert manifest.splits["train"].count == 6 * 15
    assert manifest.splits["test"].count == 6 * 5
    assert len(manifest.splits["train"].files) == 3  # 90 records, 32 per shard
    assert not [n for n in os.listdir(small_data) if n.endswith(".partial")]


def test_manifest_mean_std_match_the_pixels(small_data):
    manifest = records.read_manifest(small_data)
    pixels = _pixels(small_data, manifest, "train")
    assert manifest.mean[0] == pytest.approx(pixels.mean(), rel=1e-9)
    assert manifest.std[0] == pytest.approx(pixels.std(), rel=1e-9)


def _pixels(data_dir, manifest, split):
    import tensorflow as tf
    files = records.split_files(data_dir, manifest, split)
    batch = tf.data.TFRecordDataset(files).batch(10_000).get_single_element()
    images, _ = records.parse_batch(batch, (50, 50), 1, "raw")
    return images.numpy().astype(np.float64)


def test_every_shard_mixes_identities(tmp_path):
    make_synth(tmp_path, identities=6, images_per_identity=40, shard_size=40)
    manifest = records.read_manifest(tmp_path)
    import tensorflow as tf
    for name in manifest.splits["train"].files:
        batch = tf.data.TFRecordDataset(str(tmp_path / name)).batch(1000).get_single_element()
        _, labels = records.parse_batch(batch, (50, 50), 1, "raw")
        assert len(set(labels.numpy().tolist())) >= 4, name


def test_refuses_to_overwrite_another_dataset(tmp_path, small_data):
    make_synth(tmp_path)
    before = _digest(tmp_path)
    with pytest.raises(records.DataError, match="--overwrite"):
        make_synth(tmp_path, seed=9)
    assert _digest(tmp_path) == before
    synth.build(str(tmp_path), 4, 10, 0.2, 50, 9, "raw", 32, overwrite=True)
    assert records.read_manifest(tmp_path).num_classes == 4
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".tfrecord")]) == 2


def test_render_is_face_sized_and_varied():
    params = synth.identity_params(0, 3)
    images = synth.render(params, np.random.default_rng(0), 50)
    assert images.shape == (3, 50, 50) and images.dtype == np.uint8
    assert images.std() > 20


@pytest.mark.slow
def test_linear_classifier_is_clearly_worse_than_a_small_cnn(tmp_path):
    """The set must be learnable but not trivial (BENCHMARKS.md has the full-size figures)."""
    synth.build(str(tmp_path), 20, 60, 0.2, 50, 0, "raw", 4096, overwrite=False)
    result = separability.separability(str(tmp_path), epochs=20)
    assert result["small_cnn"] >= 0.5, result
    assert result["small_cnn"] >= result["linear"] + 0.15, result


def test_holdout_identities_and_pairs_leave_the_train_and_test_records_as_they_were(tmp_path):
    plain = make_synth(tmp_path / "plain", seed=5)
    held = synth.build(str(tmp_path / "held"), 6, 20, 0.25, 50, 5, "raw", 32, False,
                       holdout_identities=3, pairs=25)
    for name in os.listdir(tmp_path / "plain"):
        if name.endswith(".tfrecord"):
            plain_bytes = (tmp_path / "plain" / name).read_bytes()
            assert plain_bytes == (tmp_path / "held" / name).read_bytes(), name
    assert held.splits["holdout"].count == 60
    assert held.class_names == plain.class_names
    first, second, same, _ = pairs.holdout_pairs(str(tmp_path / "held"), held)
    assert same.sum() == 25 and (~same).sum() == 25
    assert len({(min(a, b), max(a, b)) for a, b in zip(first, second)}) == 50, "a pair twice"
    assert (first != second).all()
    assert records.read_manifest(str(tmp_path / "held")).resize_mode == "crop"


def test_more_pairs_than_the_holdout_images_make_is_refused(tmp_path):
    # 2 identities x 3 images: 6 matched and 9 mismatched distinct pairs.
    with pytest.raises(records.DataError, match="make 6 distinct matched and 9 mismatched"):
        synth.build(str(tmp_path / "d"), 4, 3, 0.34, 16, 0, "raw", 32, False,
                    holdout_identities=2, pairs=7)


def test_rgb_faces_carry_identity_in_colour_and_leave_gray_sets_as_they_were(tmp_path):
    import tensorflow as tf
    manifest = synth.build(str(tmp_path / "rgb"), 6, 20, 0.25, 32, 0, "raw", 64, False,
                           channels=3)
    assert manifest.channels == 3 and len(manifest.mean) == 3
    files = records.split_files(str(tmp_path / "rgb"), manifest, "train")
    batch = next(iter(tf.data.TFRecordDataset(files).batch(200)))
    images, labels = records.parse_batch(batch, (32, 32), 3)
    images, labels = images.numpy().astype(float), labels.numpy()
    # Each identity's red/green balance is its own: between identities it varies far more
    # than within one (where only the per-image white balance moves it).
    ratio = images[..., 0].mean((1, 2)) / images[..., 1].mean((1, 2))
    per_identity = [ratio[labels == k] for k in range(6)]
    within = np.mean([r.std() for r in per_identity])
    between = np.std([r.mean() for r in per_identity])
    assert between > 2 * within, (between, within)
    # Tints come from their own random stream: the gray set of the same seed is unchanged.
    gray = synth.build(str(tmp_path / "gray"), 6, 20, 0.25, 32, 0, "raw", 64, False)
    synth.build(str(tmp_path / "gray2"), 6, 20, 0.25, 32, 0, "raw", 64, False,
                        channels=1)
    assert gray.channels == 1 and _digest(tmp_path / "gray") == _digest(tmp_path / "gray2")
    with pytest.raises(ValueError, match="--channels must be 1"):
        synth.build(str(tmp_path / "two"), 6, 20, 0.25, 32, 0, "raw", 64, False, channels=2)


def test_a_non_square_size_is_the_middle_of_the_square_faces(tmp_path):
    """--image_size 112,96: each face is the square one's centre, as the field's 112x96
    template is the middle of the 112x112 one."""
    from conftest import read_records
    square, narrow = tmp_path / "square", tmp_path / "narrow"
    synth.build(str(square), 3, 4, 0.25, 40, 0, "raw", 64, False)
    synth.build(str(narrow), 3, 4, 0.25, [40, 30], 0, "raw", 64, False)
    assert list(records.read_manifest(str(narrow)).image_size) == [40, 30]
    wide, _, _ = read_records(square)
    cut, _, _ = read_records(narrow)
    np.testing.assert_array_equal(np.asarray(cut[0]).reshape(40, 30),
                                  np.asarray(wide[0]).reshape(40, 40)[:, 5:35])
