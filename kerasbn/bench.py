"""Benchmarks, each reported as a ratio against a reference measured in the same run.

    python -m kerasbn.bench --bench=input --data_dir=data/synth [--data_dir=data/synth_png]
        input-pipeline images/s against bare TFRecord reading of the same shards.
    python -m kerasbn.bench --bench=separability --data_dir=data/synth
        test accuracy of a linear softmax classifier on pixels against a small CNN.
    python -m kerasbn.bench --bench=train [--model=bn --num_classes=14700]
        training images/s of a network at each --precisions, as ratios to the first.
    python -m kerasbn.bench --bench=norms
        training step time with each --norms at each --precisions, as ratios to keras.
"""

import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from kerasbn import cli, models, norms, pipeline, records



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
        lambda f: tf.data.TFRecordDataset(f, pipeline.compression(manifest)),
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
    return {"encoding": manifest["encoding"], "bare": max(bare), "pipeline": max(piped),
            "ratio": max(piped) / max(bare)}


def _load_split(data_dir, manifest, split):
    images, labels = [], []
    for x, y in pipeline.test_dataset(data_dir, manifest, 1024, split=split):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _small_cnn(input_shape, num_classes):
    x = inputs = keras.Input(input_shape)
    for width in (32, 64, 96):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(x))
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="small_cnn")


def _linear(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    logits = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, logits, name="linear")


def separability(data_dir, epochs, batch_size=64, seed=0):
    """Test top-1 of a linear classifier on pixels and of a small CNN, same data and budget.

    A dataset worth training face networks on must leave the linear model clearly behind.
    """
    manifest = records.read_manifest(data_dir)
    x_train, y_train = _load_split(data_dir, manifest, "train")
    x_test, y_test = _load_split(data_dir, manifest, "test")
    num_classes = len(manifest["class_names"])
    result = {}
    for build in (_linear, _small_cnn):
        keras.utils.set_random_seed(seed)
        model = build(x_train.shape[1:], num_classes)
        model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0)
        result[model.name] = float(model.evaluate(x_test, y_test, verbose=0)[1])
    return result


def bench_train(name, num_classes, variants, batch_size, steps, repeats):
    """{(precision, norm): best images/s} of training steps on one in-memory batch (compute
    only), the variants measured interleaved so machine noise hits them alike."""
    images = np.random.default_rng(0).standard_normal((batch_size, 50, 50, 1), np.float32)
    labels = np.arange(batch_size) % num_classes
    data = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2)
    compiled = {}
    for precision, norm in variants:
        keras.mixed_precision.set_global_policy(precision)
        model = models.build(name, num_classes, norm=norm, weight_decay=5e-4)
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(data, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
        compiled[precision, norm] = model
    keras.mixed_precision.set_global_policy("float32")
    best = dict.fromkeys(compiled, 0.0)
    for _ in range(repeats):
        for variant, model in compiled.items():
            start = time.perf_counter()
            model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            best[variant] = max(best[variant],
                                steps * batch_size / (time.perf_counter() - start))
    return best


def main(argv):
    values, _ = cli.parse(argv, define_flags, __doc__)
    setting = f"{values.model} x{values.num_classes} classes, batch {values.batch_size}"
    if values.bench == "train":
        rates = bench_train(values.model, values.num_classes,
                            [(p, "keras") for p in values.precisions], values.batch_size,
                            values.batches, values.repeats)
        reference = rates[values.precisions[0], "keras"]
        for (precision, _), rate in rates.items():
            print(f"{setting}, {precision}: {rate:.0f} images/s, "
                  f"{rate / reference:.2f}x {values.precisions[0]}")
        return
    if values.bench == "norms":
        rates = bench_train(values.model, values.num_classes,
                            [(p, n) for p in values.precisions for n in values.norms],
                            values.batch_size, values.batches, values.repeats)
        for (precision, norm), rate in rates.items():
            print(f"{setting}, {precision}, --norm={norm}: {rate:.0f} images/s, step time "
                  f"{rates[precision, 'keras'] / rate:.2f}x keras")
        return
    if not values.data_dir:
        sys.exit("error: --data_dir is required (a directory holding manifest.json)")
    for data_dir in values.data_dir:
        if values.bench == "input":
            r = bench_input(data_dir, values.batch_size, values.batches, values.repeats)
            print(f"{data_dir} [{r['encoding']}]: bare TFRecord reading {r['bare']:.0f} "
                  f"records/s, input pipeline {r['pipeline']:.0f} images/s, "
                  f"ratio {r['ratio']:.3f}")
        else:
            r = separability(data_dir, values.epochs)
            print(f"{data_dir}: test top-1 linear {r['linear']:.3f}, "
                  f"small CNN {r['small_cnn']:.3f}")


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_enum("bench", "input", ["input", "separability", "train", "norms"],
                      "What to measure.", **on)
    flags.DEFINE_multi_string("data_dir", None, "Dataset directory (repeat to compare "
                              "several).", **on)
    flags.DEFINE_integer("batch_size", 128, "Images per batch.", lower_bound=1, **on)
    flags.DEFINE_integer("batches", 300, "Batches timed per measurement.", lower_bound=1, **on)
    flags.DEFINE_integer("repeats", 3, "Timed repeats per pipeline; the best one counts.",
                         lower_bound=1, **on)
    flags.DEFINE_integer("epochs", 20, "Training epochs per classifier (separability bench).",
                         lower_bound=1, **on)
    flags.DEFINE_enum("model", "bn", models.MODELS, "Network (train bench).", **on)
    flags.DEFINE_integer("num_classes", 14700, "Classes (train bench; the study's 14,700).",
                         lower_bound=2, **on)
    flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies "
                      "(train, norms benches); train: ratios to the first.", **on)
    flags.DEFINE_list("norms", list(norms.NORMS), "BN implementations (norms bench); step "
                      "times are ratios to keras at the same precision.", **on)


if __name__ == "__main__":
    main(sys.argv)
