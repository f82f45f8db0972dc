"""Writing exports: a model's SavedModel with the serving signatures (kerasbn.serving.signatures),
replacing only an earlier export; a run's checkpoint exported; its fixed-size core as a LiteRT or
ONNX file (kerasbn.serving.portable). `python -m kerasbn.export` and training's last step call
these."""

import os
import shutil
import tempfile

import keras
import numpy as np

from kerasbn.data import records
from kerasbn.evaluation import holdout, verification
from kerasbn.faces import detector as faces_detector
from kerasbn.runs import export_layout
from kerasbn.runs.run_dir import RunDir
from kerasbn.serving import portable, signatures
from kerasbn.utils import atomic


def is_export(path):
    """Whether `path` holds a SavedModel that kerasbn wrote (it carries the marker)."""
    return os.path.isfile(os.path.join(path, export_layout.MARKER))


def check_out(path, fmt="saved_model"):
    """Refuses an --out that holds anything but a previous kerasbn export of `fmt` (or
    nothing), or whose directory does not exist."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise records.DataError(f"--out={path}: the directory {parent} does not exist; "
                                "create it first")
    if fmt != "saved_model":
        suffix = export_layout.SUFFIXES[fmt]
        if not path.endswith(suffix):
            raise records.DataError(f"--out={path}: a {fmt} file's name must end with {suffix}")
        if os.path.exists(path) and not (os.path.isfile(path) and portable.is_portable(path)):
            raise records.DataError(f"--out={path} exists and is not a kerasbn export; choose "
                                    "a new path (kerasbn replaces only its own exports)")
    elif os.path.exists(path) and not is_export(path) and (
            not os.path.isdir(path) or os.listdir(path)):
        raise records.DataError(f"--out={path} exists and is not a kerasbn export; choose a "
                                "new directory (kerasbn replaces only its own exports)")


def threshold(model, data_dir, manifest, batch_size=256, far=None):
    """The cosine threshold best separating the holdout pairs' matched from mismatched
    (the mean of LFW's ten folds' choices) for `model`, or with `far` the loosest whose
    false accept rate there is at most `far`; None without holdout pairs."""
    if not manifest.has_holdout_pairs:
        return None
    if far is not None:
        scores = holdout.scorer(holdout.model_embedding(model), data_dir, manifest,
                                batch_size)()
        return verification.threshold_at_far(scores[0], scores[1], far)[0]
    return holdout.verifier(model, data_dir, manifest, batch_size)()["verify_threshold"]


def export_saved_model(model, manifest, path, data_dir=None, given=None, keras_file=False,
                       notes=None, far=None):
    """Writes the SavedModel to `path` through a temporary directory of this process's own,
    so a crash never leaves a partial export where a complete one is expected. `path` must
    hold nothing or an export (the caller checks an --out with `check_out`; a run dir's
    export/ is the run's own); an earlier export there is replaced, and any other file in it
    stays. With the dataset's `data_dir`, the threshold is chosen on its holdout pairs (at
    false accept rate `far` when given, else for the best accuracy);
    `given` is (threshold, where it came from) instead. `keras_file` also writes the Keras
    model file; `notes` ({key: value}) go into the marker too. Returns the files of the
    user's that stayed beside the export."""
    if data_dir:
        cut = threshold(model, data_dir, manifest, far=far)
        how = f"at FAR {far:g}" if far is not None else "for the best accuracy"
        source = f"chosen {how} on the holdout pairs of {data_dir}" if cut is not None else None
    else:
        cut, source = given or (None, None)
    archive = keras.export.ExportArchive()
    archive.track(model)
    detector, detect = faces_detector.graph()
    for network in detector.networks:
        archive.track(network)
    for name, (function, signature) in signatures.serving_functions(
            model, manifest, cut, detect).items():
        archive.add_endpoint(name, function, input_signature=signature)
    def write(tmp):
        archive.write_out(tmp, verbose=False)
        if keras_file:
            model.save(os.path.join(tmp, export_layout.KERAS_MODEL))
        atomic.write_json(os.path.join(tmp, export_layout.MARKER), {
            "written_by": "kerasbn", **signatures.input_spec(manifest), "threshold": cut,
            export_layout.THRESHOLD_SOURCE: source,
            # Not the network's own: --weights from this export leaves them out.
            export_layout.DETECTOR_VARIABLES: sorted(
                v.path for network in detector.networks for v in network.variables),
            **(notes or {})})
    return write_export(path, write)


def write_export(path, write):
    """Writes an export to `path` through a temporary directory of this process's own:
    `write(tmp)` fills it, then it replaces an earlier export at `path` (whose other files,
    the user's, stay; their names are returned)."""
    tmp = _private_dir(path, "partial")
    try:
        write(tmp)
        atomic.follow_umask(tmp)
        return _replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _private_dir(path, role):
    """A new directory beside `path` that no user and no other process owns."""
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{name}.", suffix=f".{role}", dir=parent)


def _replace(new, path):
    """Moves the export in directory `new` to `path`. An export already there is set aside
    whole, then the user's own entries in it move into the new one; returns their names."""
    if not os.path.exists(path):
        os.replace(new, path)
        return []
    old = _private_dir(path, "old")
    os.replace(path, old)
    os.replace(new, path)
    kept = sorted(set(os.listdir(old)) - set(export_layout.SAVED_MODEL))
    for name in kept:
        os.replace(os.path.join(old, name), os.path.join(path, name))
    shutil.rmtree(old)
    return kept


def export_run(run_dir, out=None, best=False, far=None):
    """Exports the newest (or best) checkpoint of a training run, rebuilt from its config;
    returns (the export's path, the user's files that stayed in it)."""
    run = RunDir(run_dir)
    if out:
        check_out(out)
    elif run.busy():
        raise records.DataError(f"--run_dir={run_dir} is training now and its last step "
                                f"exports into {run.export}; give --out elsewhere for an "
                                "export of its newest checkpoint")
    config, manifest, model, _ = signatures.restore_run(run_dir, best)
    path = out or run.export
    if far is not None and not manifest.has_holdout_pairs:
        raise records.DataError(f"--far chooses the threshold on the holdout pairs, and "
                                f"{config.data_dir} has none")
    return path, export_saved_model(model, manifest, path, config.data_dir, far=far)


def export_portable(run_dir, fmt, out=None, best=False):
    """(path, {output: max |difference| from Keras}, what the check ran on) of the run's
    fixed-size core written as a `fmt` file (kerasbn.serving.portable) with its JSON beside it."""
    portable.require(fmt)
    out = out or RunDir(run_dir).export + portable.FORMATS[fmt][0]
    check_out(out, fmt)
    config, manifest, model, _ = signatures.restore_run(run_dir, best)
    images, source = portable.check_images(config, manifest)
    height, width = manifest.image_size
    description = {
        "written_by": "kerasbn", **signatures.input_spec(manifest),
        "input": {"name": "image", "dtype": "float32",
                  "shape": [None, height, width, manifest.channels],
                  "is": "(pixel - mean) / std per channel, after gray conversion and resize"},
        "outputs": {"embedding": "L2-normalised", "probabilities": "softmax over classes"},
        "mean": manifest.mean, "std": manifest.std,
        "class_names": manifest.class_names,
        "threshold": threshold(model, config.data_dir, manifest),
        "checked_on": f"{len(images)} {source}"}
    core = portable.float32_core(config, model)
    measured = portable.write(core, out, fmt, images, description)
    return out, measured, description["checked_on"]


def export_import_portable(path, fmt, out=None):
    """As `export_portable`, for the export at `path` of an imported network
    (`python -m kerasbn.caffe_import`): its Keras model file, which takes RGB pixels and
    preprocesses them as Caffe did, checked on seeded noise pixels."""
    portable.require(fmt)
    model_file = os.path.join(path, export_layout.KERAS_MODEL)
    if not os.path.isfile(model_file):
        raise records.DataError(f"--model={path} holds no {export_layout.KERAS_MODEL}: only "
                                "an imported network's export converts from an export; give a "
                                "trained run's --run_dir")
    out = out or os.path.abspath(path).rstrip(os.sep) + portable.FORMATS[fmt][0]
    check_out(out, fmt)
    loaded, spec = signatures.load_saved_model(path)
    names = loaded.signatures["metadata"]()["class_names"].numpy()
    height, width = spec["image_size"]
    images = np.random.default_rng(0).uniform(
        0, 255, (portable.CHECK_IMAGES, height, width, spec["channels"])).astype(np.float32)
    description = {
        "written_by": "kerasbn",
        **{key: spec[key] for key in ("classes", "image_size", "channels", "resize_mode")},
        "input": {"name": "image", "dtype": "float32",
                  "shape": [None, height, width, spec["channels"]],
                  "is": "RGB pixels (0-255), resized; the network does Caffe's preprocessing"},
        "outputs": {"embedding": "L2-normalised"} | (
            {"probabilities": "softmax over classes"} if spec["classes"] else {}),
        "class_names": [n.decode("utf-8") for n in names],
        "threshold": spec.get("threshold"),
        "checked_on": f"{len(images)} noise images"}
    core = portable.core(keras.saving.load_model(model_file), spec["classes"] > 0)
    return out, portable.write(core, out, fmt, images, description), description["checked_on"]
