"""tf.data pipelines from a manifest's shards to normalised (image, label) batches.

Training: per-epoch shuffled file list, parallel interleave, bounded shuffle buffer, one
vectorised parse per batch, optional random crop (pad and crop back) and mirror, the
manifest's mean/std, prefetch. Testing: every record exactly once, in manifest order, the
last partial batch included. Both shard by file under tf.distribute (`input_context`).
"""

import numpy as np
import tensorflow as tf

from kerasbn import records


def compression(manifest):
    """The TFRecord compression type of a dataset (None when uncompressed)."""
    return manifest.get("compression") or None


def check_shards(data_dir, manifest, split):
    """Reads the first record of every shard of `split` and checks its image size.

    Catches shards of another dataset before training starts, naming the file.
    """
    height, width = manifest["image_size"]
    expected = [height, width, manifest["channels"]]
    for path in records.split_files(data_dir, manifest, split):
        try:
            first = next(iter(tf.data.TFRecordDataset(path, compression(manifest)).take(1)),
                         None)
        except tf.errors.OpError as e:
            raise records.DataError(f"{path} cannot be read as a TFRecord shard ({e.message}); "
                                    "rebuild the dataset") from None
        if first is None:
            raise records.DataError(f"{path} holds no records; rebuild the dataset")
        example = tf.train.Example.FromString(first.numpy()).features.feature
        found = [example[f"image/{key}"].int64_list.value[0] if f"image/{key}" in example
                 else 1 for key in ("height", "width", "channels")]
        if found != expected:
            raise records.DataError(
                f"{path} holds {found[0]}x{found[1]}x{found[2]} images but "
                f"{records.manifest_path(data_dir)} says {height}x{width}x{expected[2]}; "
                "rebuild the shards or fix the manifest with inspect_records --write_manifest")


def normalize(images, manifest):
    """uint8 [N, H, W, C] -> float32 with the manifest's per-channel training mean and std."""
    mean = tf.constant(np.asarray(manifest["mean"], np.float32))
    std = tf.constant(np.asarray(manifest["std"], np.float32))
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
        flip = tf.random.stateless_uniform([n], seeds[1]) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images


def _parser(manifest):
    image_size = manifest["image_size"]
    return lambda serialized: records.parse_batch(
        serialized, image_size, manifest["channels"], manifest["encoding"],
        manifest.get("label_offset", 0))


def train_dataset(data_dir, manifest, batch_size, seed=0, shuffle_buffer=16384, crop_pad=0,
                  mirror=False, cycle_length=8, input_context=None, start_step=0):
    """Endless training batches of (float32 normalised images, int32 labels).

    Seeded: the same seed and `start_step` give the same batches. A resumed run passes its
    iteration as `start_step`, getting a fresh shuffle rather than a replay of the first
    epoch. `batch_size` is per replica when `input_context` is given.
    """
    files = records.split_files(data_dir, manifest, "train")
    stream_seed = seed * 1_000_003 + start_step
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise records.DataError(
                f"{data_dir} has {len(files)} training shard(s) for "
                f"{input_context.num_input_pipelines} input pipelines, so some would read "
                "nothing; rebuild the dataset with a smaller --shard_size")
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    dataset = dataset.shuffle(len(files), seed=stream_seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat()
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression(manifest)),
        cycle_length=min(cycle_length, len(files)), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.shuffle(shuffle_buffer, seed=stream_seed + 1,
                              reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    parse = _parser(manifest)

    def prepare(step, serialized):
        images, labels = parse(serialized)
        if crop_pad or mirror:
            images = random_crop_mirror(images, tf.stack([tf.cast(stream_seed, tf.int64), step]),
                                        crop_pad, mirror)
        return normalize(images, manifest), labels

    dataset = tf.data.Dataset.zip(tf.data.Dataset.counter(), dataset)
    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def test_dataset(data_dir, manifest, batch_size, split="test", input_context=None):
    """Every record of `split` once, in manifest order, as (normalised images, labels) batches."""
    files = records.split_files(data_dir, manifest, split)
    if input_context is not None and input_context.num_input_pipelines > 1:
        files = files[input_context.input_pipeline_id::input_context.num_input_pipelines]
    dataset = tf.data.TFRecordDataset(files, compression(manifest))
    dataset = dataset.batch(batch_size, drop_remainder=False)
    parse = _parser(manifest)

    def prepare(serialized):
        images, labels = parse(serialized)
        return normalize(images, manifest), labels

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
