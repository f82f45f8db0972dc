"""Exports a trained network as a SavedModel that serves face photos.

Its signatures (kerasbn.serving.signatures): `serving_default` takes a uint8 batch
[N, H, W, 1 or 3] of any size and preprocesses it as the dataset was made (gray, resize_mode,
mean/std), then returns `logits`, `probabilities`, the top-k `labels` and identity `names`, and the
L2-normalised `embedding`; `embed` only the embedding; `serve_bytes` encoded JPEG/PNG
strings; `metadata` the class names and the verification threshold chosen on the holdout
pairs. kerasbn_export.json beside it records the classes, image size, channels, resize mode
and threshold. Loading needs TensorFlow only:
`tf.saved_model.load(DIR).signatures["serving_default"]`.

`--format=litert|onnx` writes the fixed-size core instead (kerasbn.serving.portable): a .tflite or
.onnx file taking normalised float32 images, checked against Keras with the runtime that will
run it, and a JSON file beside it with the preprocessing, class names and threshold.

    python -m kerasbn.export --run_dir runs/bn [--checkpoint=latest|best] [--out DIR]
    python -m kerasbn.export --run_dir runs/bn --format=litert|onnx [--out FILE]
    python -m kerasbn.export --model exports/caffe_net --format=litert|onnx [--out FILE]

`--model` converts an imported Caffe network's export (kerasbn.caffe_import): its core takes
RGB pixels and does Caffe's preprocessing itself.

`--format=pth` writes the backbone of a run of an arcface_torch network (iresnet18-100,
mobilefacenet, vit_t/s/b, or a --backbone from kerasbn.torch_import), or a torch_import's
export given as --model, as the state dict arcface_torch's
`get_model(NAME, num_features=D).load_state_dict` takes (kerasbn.serving.pth), with a JSON
beside it naming NAME and D:

    python -m kerasbn.export --run_dir runs/r50 --format=pth [--out FILE.pth]

`--far=F` stores the threshold at false accept rate F on the run's holdout pairs (the
loosest with FAR at most F) instead of the best-accuracy one. `--gallery=GALLERY` (made by
kerasbn.enroll) writes an export whose serve_photo also names each face it finds among the
enrolled people, `identity` (or "unknown") and `identity_score`, searched inside the graph:

    python -m kerasbn.export --model runs/r50/export --gallery=gallery --out=exports/door
"""

import os
import shutil
import sys
import tempfile

from absl import flags

from kerasbn.flags import cli
from kerasbn.serving import exporter, gallery, portable, pth


LABELS = {"litert": "LiteRT", "onnx": "ONNX"}


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("run_dir", None, "A directory made by kerasbn.train.", **on)
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "The newest checkpoint, or "
                      "the weights of the run's best test.", **on)
    flags.DEFINE_enum("format", "saved_model", ["saved_model", "litert", "onnx", "pth"],
                      "saved_model: the serving SavedModel; litert (.tflite) or onnx: the "
                      "fixed-size float32 core for phones and other runtimes; pth: the "
                      "backbone as an arcface_torch state dict.", **on)
    flags.DEFINE_string("model", None, "Instead of --run_dir, with --format=litert|onnx|pth: "
                        "an imported network's export (python -m kerasbn.caffe_import or "
                        "torch_import).", **on)
    flags.DEFINE_float("far", None, "Choose the stored threshold at this false accept rate on "
                       "the run's holdout pairs.", lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_string("gallery", None, "A gallery (kerasbn.enroll) whose people the "
                        "export's serve_photo names; needs --out.", **on)
    flags.DEFINE_string("out", None, "Where to write it (default: RUN_DIR/export, "
                        "RUN_DIR/export.tflite, .onnx or .pth).", **on)


def export_gallery(values, best):
    """(path, kept) of the export with --gallery inside, from --model or --run_dir's newest
    (or best) checkpoint."""
    people = gallery.read(values.gallery)
    exporter.check_out(values.out)
    if values.model:
        return values.out, gallery.export_with(values.model, people, values.out,
                                               values.gallery)
    scratch = tempfile.mkdtemp(prefix=".export.", dir=os.path.dirname(
        os.path.abspath(values.out)))
    try:
        exporter.export_run(values.run_dir, os.path.join(scratch, "export"), best, values.far)
        return values.out, gallery.export_with(os.path.join(scratch, "export"), people,
                                               values.out, values.gallery)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv):
    values, _ = cli.parse(argv, define_flags, __doc__)
    if bool(values.run_dir) == bool(values.model):
        sys.exit("error: give --run_dir (a directory made by kerasbn.train), or --model (an "
                 "imported network's export) with --format=litert|onnx|pth")
    if values.gallery and (values.format != "saved_model" or not values.out):
        sys.exit("error: --gallery writes a SavedModel to --out: give --out=DIR and no --format")
    if values.model and values.format == "saved_model" and not values.gallery:
        sys.exit(f"error: --model={values.model} is a SavedModel already; --model takes "
                 "--format=litert, onnx or pth, or --gallery")
    if values.far is not None and (values.model or values.format != "saved_model"):
        sys.exit("error: --far chooses a run's SavedModel threshold on its holdout pairs; give "
                 "--run_dir and no --format")
    best = values.checkpoint == "best"
    if values.out:
        cli.check_writable(values.out, by_tensorflow=True)
    stopped = "nothing was written (an export is written whole or not at all)"
    if values.gallery:
        path, kept = cli.run(lambda: export_gallery(values, best), stopped)
        print(f"SavedModel with the gallery {values.gallery}: {path}"
              + (f" (your files there stayed: {', '.join(kept)})" if kept else ""))
        return
    if values.format == "pth":
        source = values.model or values.run_dir
        path, network, keys = cli.run(lambda: pth.export(
            source, values.out, best, from_export=bool(values.model)), stopped)
        print(f"arcface_torch {network} state dict: {path} ({keys} keys; how to load it: "
              f"{portable.sidecar(path)})")
        return
    if values.model:
        path, measured, checked_on = cli.run(lambda: exporter.export_import_portable(
            values.model, values.format, values.out), stopped)
    elif values.format == "saved_model":
        path, kept = cli.run(lambda: exporter.export_run(values.run_dir, values.out, best,
                                                         values.far), stopped)
        print(f"SavedModel: {path}" + (f" (your files there stayed: {', '.join(kept)})"
                                       if kept else ""))
        return
    else:
        path, measured, checked_on = cli.run(lambda: exporter.export_portable(
            values.run_dir, values.format, values.out, best), stopped)
    worst = ", ".join(f"{name} {value:.1e}" for name, value in measured.items())
    print(f"{LABELS[values.format]}: {path} (max |difference| from Keras on {checked_on}: "
          f"{worst}; preprocessing and names in {portable.sidecar(path)})")


if __name__ == "__main__":
    main(sys.argv)
