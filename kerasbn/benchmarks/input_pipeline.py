"""The input pipeline's images/s against bare TFRecord reading of the same shards
(`bench --bench=input`)."""

import time

import tensorflow as tf

from kerasbn.data import pipeline, records


def _images_per_second(dataset, batches):
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += int(tf.shape(tf.nest.flatten(next(iterator))[0])[0])
    return images / (time.perf_counter() - start)


def bare_reading(data_dir, manifest, batch_size):
    """The reference: the same shards read as bare records, batched, nothing parsed."""
    files = records.split_files(data_dir, manifest, "train")
    dataset = tf.data.Dataset.from_tensor_slices(files).repeat().interleave(
        lambda f: tf.data.TFRecordDataset(f, manifest.compression),
        cycle_length=min(8, len(files)), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def bench_input(data_dir, batch_size, batches, repeats):
    """Returns {encoding, bare, pipeline, ratio}: best-of-`repeats` images/s, interleaved."""
    manifest = records.read_manifest(data_dir)
    bare, piped = [], []
    for _ in range(repeats):
        bare.append(_images_per_second(bare_reading(data_dir, manifest, batch_size), batches))
        piped.append(_images_per_second(
            pipeline.train_dataset(data_dir, manifest, batch_size, mirror=True), batches))
    return {"encoding": manifest.encoding, "bare": max(bare), "pipeline": max(piped),
            "ratio": max(piped) / max(bare)}
