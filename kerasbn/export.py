"""Exports a trained network as a SavedModel that serves raw uint8 faces.

The `serving_default` signature takes a uint8 batch [N, H, W, C], normalises it with the
training split's mean/std inside the graph, and returns float32 `logits`, `probabilities`
(softmax) and `embedding` (the 320-d pooled feature, L2-normalised) for verification by
cosine. kerasbn_export.json beside it records the classes, image size, channels and resize
mode a photo must be made into (`serving.from_saved_model` reads it).

    python -m kerasbn.export --run_dir runs/bn [--out DIR]
"""

import os
import shutil
import sys

import keras
import tensorflow as tf
from absl import flags

from kerasbn import atomic, cli, records, serving
from kerasbn.run_dir import RunDir

def is_export(path):
    """Whether `path` holds a SavedModel that kerasbn wrote (it carries serving.MARKER)."""
    return os.path.isfile(os.path.join(path, serving.MARKER))


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
    spec = serving.input_spec(manifest)
    network = serving.serving_model(model, manifest)
    height, width = manifest["image_size"]
    archive = keras.export.ExportArchive()
    archive.track(network)
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
            return network(tf.identity(images), training=False)

    archive.add_endpoint(
        "serving_default", serve,
        input_signature=[tf.TensorSpec([None, *expected], tf.uint8, name="images")])
    tmp = path + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(tmp, verbose=False)
    atomic.write_json(os.path.join(tmp, serving.MARKER), {"written_by": "kerasbn", **spec})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def export_run(run_dir, out=None):
    """Exports the newest checkpoint of a training run, rebuilt from its config."""
    if out:
        check_out(out)
    _, manifest, model, _ = serving.restore_run(run_dir)
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
