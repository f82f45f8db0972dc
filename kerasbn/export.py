"""Exports a trained network as a SavedModel that serves raw uint8 faces.

The `serving_default` signature takes a uint8 batch [N, H, W, C], normalises it with the
training split's mean/std inside the graph, and returns `probabilities` (softmax, float32)
and `embedding` (the 320-d pooled feature, L2-normalised) for verification by cosine.

    python -m kerasbn.export --run_dir runs/bn [--out DIR]
"""

import os
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from kerasbn import atomic, checkpoints, cli, optimizers, records, train_flags
from kerasbn.run_dir import RunDir

# Written into every export, so a later export may replace it and nothing else.
MARKER = "kerasbn_export.json"


def serving_model(model, manifest):
    """A Keras model: uint8 images -> {probabilities, embedding}, normalisation inside."""
    height, width = manifest["image_size"]
    mean = np.asarray(manifest["mean"], np.float32)
    std = np.asarray(manifest["std"], np.float32)
    images = keras.Input((height, width, manifest["channels"]), dtype="uint8", name="images")
    x = (keras.ops.cast(images, "float32") - mean) / std
    features = keras.Model(model.inputs, [model.get_layer("embedding").output, model.output])
    embedding, logits = features(x)
    embedding = keras.ops.cast(embedding, "float32")
    return keras.Model(images, {
        "probabilities": keras.ops.softmax(keras.ops.cast(logits, "float32")),
        "embedding": embedding / keras.ops.maximum(
            keras.ops.norm(embedding, axis=-1, keepdims=True), 1e-12)})


def is_export(path):
    """Whether `path` holds a SavedModel that kerasbn wrote (it carries MARKER)."""
    return os.path.isfile(os.path.join(path, MARKER))


def check_out(path):
    """Refuses an --out that holds anything but a previous kerasbn export (or nothing)."""
    if os.path.exists(path) and not is_export(path) and (
            not os.path.isdir(path) or os.listdir(path)):
        raise records.DataError(f"--out={path} exists and is not a kerasbn export; choose a "
                                "new directory (kerasbn replaces only its own exports)")


def export_saved_model(model, manifest, path):
    """Writes the SavedModel to `path` via a temporary directory, so a crash never leaves a
    partial export where a complete one is expected. `path` must hold nothing or an export
    (the caller checks an --out with `check_out`; a run dir's export/ is the run's own)."""
    serving = serving_model(model, manifest)
    height, width = manifest["image_size"]
    archive = keras.export.ExportArchive()
    archive.track(serving)
    expected = [height, width, manifest["channels"]]

    def serve(images):
        # A signature call does not check shapes, and a batch of the wrong rank or channel
        # count would reach the convolution kernels, which abort the process.
        shape = tf.concat([tf.shape(images), tf.zeros([4], tf.int32)], 0)
        ok = tf.logical_and(tf.equal(tf.rank(images), 4),
                            tf.reduce_all(tf.equal(shape[1:4], expected)))
        check = tf.debugging.Assert(ok, [
            f"images must be a uint8 batch [N, {height}, {width}, {expected[2]}]; got shape",
            tf.shape(images)])
        with tf.control_dependencies([check]):
            return serving(tf.identity(images), training=False)

    archive.add_endpoint(
        "serving_default", serve,
        input_signature=[tf.TensorSpec([None, *expected], tf.uint8, name="images")])
    tmp = path + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(tmp, verbose=False)
    atomic.write_json(os.path.join(tmp, MARKER), {
        "written_by": "kerasbn", "classes": len(manifest["class_names"]),
        "image_size": list(manifest["image_size"]), "channels": manifest["channels"]})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def restore_run(run_dir, best=False, check_files=False):
    """(config, manifest, model, checkpoint prefix) of a training run: its network rebuilt
    from its config and restored from its newest checkpoint (its best test's, with `best`).
    `check_files` also checks that the dataset's shards are there (to read them)."""
    run = RunDir(run_dir)
    config = train_flags.stored_config(run_dir)
    manifest = records.read_manifest(config.data_dir, check_files=check_files)
    keras.mixed_precision.set_global_policy(config.precision)
    model = optimizers.build_and_compile(config)
    prefix = checkpoints.restore_latest(run, model, best)
    if not prefix:
        raise records.DataError(f"{run.best if best else run.checkpoints} holds no "
                                "checkpoint; train the run first")
    return config, manifest, model, prefix


def export_run(run_dir, out=None):
    """Exports the newest checkpoint of a training run, rebuilt from its config."""
    if out:
        check_out(out)
    _, manifest, model, _ = restore_run(run_dir)
    return export_saved_model(model, manifest, out or RunDir(run_dir).export)


def define_flags(values):
    flags.DEFINE_string("run_dir", None, "A directory made by kerasbn.train.",
                        flag_values=values)
    flags.DEFINE_string("out", None, "Where to write the SavedModel (default: RUN_DIR/export).",
                        flag_values=values)


def main(argv):
    values, _ = cli.parse(argv, define_flags, __doc__)
    if not values.run_dir:
        sys.exit("error: --run_dir is required (a directory made by kerasbn.train)")
    try:
        path = export_run(values.run_dir, values.out)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"SavedModel: {path}")


if __name__ == "__main__":
    main(sys.argv)
