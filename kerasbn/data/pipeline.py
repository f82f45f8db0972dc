"""tf.data pipelines from a manifest's shards to normalised (image, label) batches.

Training: a stream that is a function of the seed (per-epoch shard order, parallel
interleave, a stateless shuffle of each block of records), one vectorised parse per batch,
optional random crop (pad and crop back) and mirror, the manifest's mean/std, prefetch.
Testing: every record exactly once, in manifest order, the last partial batch included. Both
shard by file under tf.distribute (`input_context`).
`checks.check_split` checks a split's shards against the manifest before training reads them.
"""

import numpy as np
import tensorflow as tf

from kerasbn.data import records


def normalize(images, manifest):
    """uint8 [N, H, W, C] -> float32 with the manifest's per-channel training mean and std."""
    mean = tf.constant(np.asarray(manifest.mean, np.float32))
    std = tf.constant(np.asarray(manifest.std, np.float32))
    return (tf.cast(images, tf.float32) - mean) / std


def random_crop_mirror(images, seed, crop_pad, mirror):
    """Pads each image by `crop_pad` and crops it back at a random offset; mirrors half of them.

    Each image gets its own offset and flip, drawn from the stateless `seed`, so a seeded
    pipeline is deterministic however its map runs in parallel.
    """
    n = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if crop_pad:
        padded = tf.pad(images, [[0, 0], [crop_pad, crop_pad], [crop_pad, crop_pad], [0, 0]],
                        mode="REFLECT")
        offsets = tf.random.stateless_uniform([n, 2], seeds[0], 0, 2 * crop_pad + 1, tf.int32)
        rows = offsets[:, :1] + tf.range(height)[None, :]
        cols = offsets[:, 1:] + tf.range(width)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    if mirror:
        flip = tf.cast(tf.random.stateless_uniform([n], seeds[1]) < 0.5, tf.int32)
        # Only the flipped images are reversed, then stitched back in place: on CPU about 4x
        # cheaper than a where() over the whole batch and its reversed copy.
        kept, flipped = tf.dynamic_partition(images, flip, 2)
        images = tf.dynamic_stitch(tf.dynamic_partition(tf.range(n), flip, 2),
                                   [kept, mirrored(flipped)])
    return images


def mirrored(images):
    """[N, H, W, C] images flipped left-right, through 2-D reverses of their rows (TensorFlow's
    CPU reverse is several times slower over the 4-D tensor or a 3-D [rows, W, C] one)."""
    shape, channels = tf.shape(images), images.shape[3]
    rows = tf.reverse(tf.reshape(images, [-1, images.shape[2] * channels]), axis=[1])
    if channels > 1:  # the row reverse also reversed each pixel's channels: put them back
        rows = tf.reverse(tf.reshape(rows, [-1, channels]), axis=[1])
    return tf.reshape(rows, shape)


def _parser(manifest):
    image_size = manifest.image_size
    return lambda serialized: records.parse_batch(
        serialized, image_size, manifest.channels, manifest.encoding,
        manifest.label_offset)


def read_shard(path, manifest, skip_corrupt):
    """A shard's records; with `skip_corrupt`, a shard ends quietly at its first corrupt
    record (`checks.check_split` has counted what is lost)."""
    dataset = tf.data.TFRecordDataset(path, manifest.compression)
    return dataset.ignore_errors() if skip_corrupt else dataset


def shards_by_record(manifest, pipelines):
    """Whether `pipelines` input pipelines must share the training shards record by record
    (fewer shards than pipelines), instead of each reading its own."""
    return pipelines > 1 and len(manifest.splits["train"].files) < pipelines


def train_dataset(data_dir, manifest, batch_size, seed=0, shuffle_buffer=16384, crop_pad=0,
                  mirror=False, cycle_length=8, input_context=None, start_step=0,
                  skip_corrupt=False, epoch_records=None):
    """Endless training batches of (float32 normalised images, int32 labels).

    The stream is a function of `seed` alone: epoch e reads the shards in an order drawn from
    (seed, e), interleaves them and shuffles each block of `shuffle_buffer` records by (seed,
    e, block); batches run on across epoch boundaries, and batch b's crop and mirror are
    drawn from (seed, b). `start_step` (batches already consumed) continues that stream
    exactly: it starts at the epoch that holds record start_step * batch_size and skips the
    records before it there (read, not decoded: at most one epoch). `epoch_records` is the
    number of records one epoch yields (default: the manifest's count of the shards read;
    pass the readable count when corrupt records are skipped). `batch_size` is per replica
    when `input_context` is given.

    With several input pipelines (tf.distribute workers), each reads its own shards when
    there are at least as many as pipelines (`shards_by_record` says when not); otherwise
    each takes every Nth record of the one stream, so the pipelines' batches k together are
    the one-pipeline global batch k.
    """
    files = records.split_files(data_dir, manifest, "train")
    counts = manifest.splits["train"].file_counts
    pipelines, index = (input_context.num_input_pipelines, input_context.input_pipeline_id) \
        if input_context is not None else (1, 0)
    by_record = shards_by_record(manifest, pipelines)
    if pipelines > 1 and not by_record:
        files = files[index::pipelines]
        counts = counts[index::pipelines] if counts else None
    if epoch_records is None:
        epoch_records = sum(counts) if counts else manifest.splits["train"].count
    first_record = start_step * batch_size * (pipelines if by_record else 1)
    first_epoch, skip = divmod(first_record, epoch_records)
    # Every block of an epoch is full but its last, so the records skipped in the first one
    # are whole blocks (dropped before they are shuffled) and the head of the next.
    skip_blocks, skip_head = divmod(skip, shuffle_buffer)
    names = tf.constant(files)

    def epoch(e):
        order = tf.argsort(tf.random.stateless_uniform([len(files)], tf.stack([seed, e])))
        shards = tf.data.Dataset.from_tensor_slices(tf.gather(names, order))
        records_ = shards.interleave(
            lambda f: read_shard(f, manifest, skip_corrupt),
            cycle_length=min(cycle_length, len(files)), block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # A stateless shuffle of each block of `shuffle_buffer` records, keyed by (seed,
        # epoch, block): tf.data's own shuffle cannot take a per-epoch seed tensor.
        first = tf.equal(e, first_epoch)
        blocks = records_.batch(shuffle_buffer).enumerate().skip(
            tf.where(first, tf.constant(skip_blocks, tf.int64), 0))
        return blocks.map(lambda i, block: tf.gather(block, tf.argsort(
            tf.random.stateless_uniform([tf.shape(block)[0]], tf.stack(
                [seed * 1_000_003 + e, i]))))[tf.where(first & (i == skip_blocks),
                                                       tf.constant(skip_head, tf.int64), 0):],
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    # Each global batch is `chunk` consecutive records; with pipelines sharing the stream
    # record by record, each keeps every Nth of them.
    chunk = batch_size * (pipelines if by_record else 1)
    dataset = rebatched(tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch), chunk)
    if by_record:
        dataset = dataset.map(lambda batch: batch[index::pipelines])
    parse = _parser(manifest)

    def prepare(step, serialized):
        images, labels = parse(serialized)
        if crop_pad or mirror:
            images = random_crop_mirror(images, tf.stack([tf.constant(seed, tf.int64), step]),
                                        crop_pad, mirror)
        return normalize(images, manifest), labels

    dataset = tf.data.Dataset.zip(tf.data.Dataset.counter(start_step), dataset)
    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def rebatched(blocks, size):
    """Batches of `size` records, in order, from a stream of record blocks of any sizes.

    Carrying the leftover of each block into the next keeps the per-record work to the
    reading: unbatching to single records and batching them again cost a third of the
    training pipeline's time."""
    def step(carry, block):
        joined = tf.concat([carry, block], 0)
        full = tf.shape(joined)[0] // size * size
        return joined[full:], tf.reshape(joined[:full], [-1, size])

    return blocks.scan(tf.constant([], tf.string), step).unbatch()


def test_dataset(data_dir, manifest, batch_size, split="test", input_context=None,
                 skip_corrupt=False, raw=False):
    """Every record of `split` once, in manifest order, as (normalised images, labels) batches;
    with `raw`, the images as stored (uint8, for a network that normalises them itself)."""
    files = records.split_files(data_dir, manifest, split)
    if input_context is not None and input_context.num_input_pipelines > 1:
        files = files[input_context.input_pipeline_id::input_context.num_input_pipelines]
    dataset = tf.data.Dataset.from_tensor_slices(files).flat_map(
        lambda f: read_shard(f, manifest, skip_corrupt))
    dataset = dataset.batch(batch_size, drop_remainder=False)
    parse = _parser(manifest)

    def prepare(serialized):
        images, labels = parse(serialized)
        return (images if raw else normalize(images, manifest)), labels

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
