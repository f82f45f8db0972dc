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
from absl import app, flags

from kerasbn import checkpoints, records, solver
from kerasbn import flags as train_flags

EXPORT_NAME = "export"


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


def export_saved_model(model, manifest, path):
    """Writes the SavedModel to `path` via a temporary directory, so a crash never leaves a
    partial export where a complete one is expected."""
    serving = serving_model(model, manifest)
    height, width = manifest["image_size"]
    archive = keras.export.ExportArchive()
    archive.track(serving)
    archive.add_endpoint(
        "serving_default", lambda images: serving(images, training=False),
        input_signature=[tf.TensorSpec([None, height, width, manifest["channels"]], tf.uint8,
                                       name="images")])
    tmp = path + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(tmp, verbose=False)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def export_run(run_dir, out=None):
    """Exports the newest checkpoint of a training run (rebuilt from its flags.txt)."""
    flagfile = train_flags.flags_path(run_dir)
    if not os.path.isfile(flagfile):
        raise records.DataError(f"{flagfile} not found: --run_dir must be a run directory "
                                "made by `python -m kerasbn.train`")
    flags.FLAGS(["export", f"--flagfile={flagfile}", f"--run_dir={run_dir}"])
    manifest = records.read_manifest(flags.FLAGS.data_dir, check_files=False)
    config = train_flags.resolve(manifest, flags.FLAGS.data_dir)
    keras.mixed_precision.set_global_policy(config["precision"])
    model = solver.build_and_compile(config)
    if not checkpoints.restore_latest(run_dir, model):
        raise records.DataError(f"{checkpoints.checkpoint_dir(run_dir)} holds no checkpoint; "
                                "train the run first")
    return export_saved_model(model, manifest, out or os.path.join(run_dir, EXPORT_NAME))


def main(argv):
    del argv
    if not flags.FLAGS.run_dir:
        sys.exit("error: --run_dir is required (a directory made by kerasbn.train)")
    try:
        path = export_run(flags.FLAGS.run_dir, flags.FLAGS.out)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"SavedModel: {path}")


def define_flags():
    """Defines this command's flags (only when run as a command, so modules import together)."""
    flags.DEFINE_string("out", None, "Where to write the SavedModel (default: RUN_DIR/export).")


if __name__ == "__main__":
    define_flags()
    app.run(main)
