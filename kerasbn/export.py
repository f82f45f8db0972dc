"""Exports a trained network as a SavedModel that serves face photos.

Its signatures (kerasbn.serving): `serving_default` takes a uint8 batch [N, H, W, 1 or 3] of
any size and preprocesses it as the dataset was made (gray, resize_mode, mean/std), then
returns `logits`, `probabilities`, the top-k `labels` and identity `names`, and the
L2-normalised `embedding`; `embed` only the embedding; `serve_bytes` encoded JPEG/PNG
strings; `metadata` the class names and the verification threshold chosen on the holdout
pairs. kerasbn_export.json beside it records the classes, image size, channels, resize mode
and threshold. Loading needs TensorFlow only:
`tf.saved_model.load(DIR).signatures["serving_default"]`.

    python -m kerasbn.export --run_dir runs/bn [--checkpoint=latest|best] [--out DIR]
"""

import os
import shutil
import sys

import keras
from absl import flags

from kerasbn import atomic, cli, holdout, records, serving
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


def threshold(model, data_dir, manifest, batch_size=256):
    """The cosine threshold best separating the holdout pairs' matched from mismatched
    (the mean of LFW's ten folds' choices) for `model`; None without holdout pairs."""
    if not holdout.available(manifest):
        return None
    return holdout.make_verifier(model, data_dir, manifest, batch_size)()["verify_threshold"]


def export_saved_model(model, manifest, path, data_dir=None):
    """Writes the SavedModel to `path` via a temporary directory, so a crash never leaves a
    partial export where a complete one is expected. `path` must hold nothing or an export
    (the caller checks an --out with `check_out`; a run dir's export/ is the run's own).
    With the dataset's `data_dir`, the threshold is chosen on its holdout pairs."""
    cut = threshold(model, data_dir, manifest) if data_dir else None
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (function, signature) in serving.serving_functions(model, manifest,
                                                                 cut).items():
        archive.add_endpoint(name, function, input_signature=signature)
    tmp = path + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(tmp, verbose=False)
    atomic.write_json(os.path.join(tmp, serving.MARKER), {
        "written_by": "kerasbn", **serving.input_spec(manifest), "threshold": cut})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def export_run(run_dir, out=None, best=False):
    """Exports the newest (or best) checkpoint of a training run, rebuilt from its config."""
    if out:
        check_out(out)
    config, manifest, model, _ = serving.restore_run(run_dir, best)
    return export_saved_model(model, manifest, out or RunDir(run_dir).export, config.data_dir)


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("run_dir", None, "A directory made by kerasbn.train.", **on)
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "The newest checkpoint, or "
                      "the weights of the run's best test.", **on)
    flags.DEFINE_string("out", None, "Where to write the SavedModel (default: RUN_DIR/export).",
                        **on)


def main(argv):
    values, _ = cli.parse(argv, define_flags, __doc__)
    if not values.run_dir:
        sys.exit("error: --run_dir is required (a directory made by kerasbn.train)")
    try:
        path = export_run(values.run_dir, values.out, values.checkpoint == "best")
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"SavedModel: {path}")


if __name__ == "__main__":
    main(sys.argv)
