"""Brings a trained Caffe network over: a deploy prototxt and its caffemodel become a kerasbn
export, served, evaluated and aligned-photo-fed like a trained run's.

    python -m kerasbn.caffe_import --prototxt deploy.prototxt \\
        --caffemodel weights.caffemodel --out DIR [--channel_order=bgr --mean=127.5 \\
        --scale=0.0078125] [--pairs pairs.txt --image_root photos/ | --threshold 0.3]

Both network formats (today's `layer` and the legacy `layers`) parse with protobuf alone
(kerasbn.caffe.proto); the layers supported are kerasbn.caffe.network.SUPPORTED, each
computing what Caffe's does (checked against OpenCV's dnn module). DIR gets the SavedModel
with the signatures of `python -m kerasbn.export` (serving_default, embed, serve_bytes,
serve_photo, metadata) and the Keras model file, model.keras. Photos are preprocessed as
the network was trained: --channel_order (Caffe's default BGR), --mean subtracted (one value
or one per channel, in the network's order), then times --scale. The embedding is the input
of the classifier before a final Softmax, else the network's output (--embedding_layer names
another layer). A verification threshold is chosen on --pairs (LFW's layout, photos under
--image_root, the largest face of each aligned with --align) as training chooses it on
holdout pairs, or given with --threshold. --out follows export's rules: nothing, or an
earlier export, is replaced; nothing is written when the import fails.
"""

import math
import sys
import time

from absl import flags

from kerasbn.caffe import importer
from kerasbn.evaluation import evaluator, verification
from kerasbn.flags import cli
from kerasbn.nn import caffe_layers
from kerasbn.runs import export_layout
from kerasbn.serving import exporter, signatures
from kerasbn.utils import errors


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("prototxt", None, "The deploy network (text prototxt).", **on)
    flags.DEFINE_string("caffemodel", None, "Its trained weights (binary caffemodel).", **on)
    flags.DEFINE_string("out", None, "The export directory to write.", **on)
    flags.DEFINE_list("input_size", None, "H,W: the input size, overriding the prototxt's.",
                      **on)
    flags.DEFINE_enum("channel_order", "bgr", ["bgr", "rgb"], "The channel order the network "
                      "was trained on (Caffe's default, through OpenCV, is BGR).", **on)
    flags.DEFINE_list("mean", ["0"], "Subtracted from the pixels (0-255): one value, or one "
                      "per channel in the network's channel order.", **on)
    flags.DEFINE_float("scale", 1.0, "Multiplies the pixels after the mean (e.g. 0.0078125 "
                       "for (x - 127.5) / 128).", lower_bound=0, **on)
    flags.DEFINE_string("embedding_layer", None, "The layer whose output is the embedding "
                        "(default: the classifier's input before a final Softmax, else the "
                        "output).", **on)
    flags.DEFINE_string("class_names", None, "A text file of the classifier's class names, "
                        "one per line (default: class 0, class 1, ...).", **on)
    flags.DEFINE_string("pairs", None, "An LFW-format pairs.txt to choose the verification "
                        "threshold on.", **on)
    flags.DEFINE_string("image_root", None, "The photos --pairs names (LFW's layout).", **on)
    flags.DEFINE_bool("align", False, "Align the largest face of each --pairs photo first.",
                      **on)
    flags.DEFINE_float("threshold", None, "The verification threshold (cosine), instead of "
                       "--pairs.", lower_bound=-1, upper_bound=1, **on)
    flags.DEFINE_integer("batch_size", 64, "Photos per batch with --pairs.", lower_bound=1,
                         **on)


def _problem(values):
    """The first mistake in the flags, as a message, or None."""
    for name in ("prototxt", "caffemodel", "out"):
        if not getattr(values, name):
            return f"--{name} is required"
    if values.pairs and values.threshold is not None:
        return "--pairs chooses the threshold; give it or --threshold, not both"
    if bool(values.pairs) != bool(values.image_root):
        return "--pairs and --image_root go together (the pairs file and its photos)"
    if values.input_size and (len(values.input_size) != 2 or not all(
            v.isdigit() and int(v) > 0 for v in values.input_size)):
        return f"--input_size takes H,W in pixels, got {','.join(values.input_size)}"
    try:
        mean = [float(v) for v in values.mean]
    except ValueError:
        return f"--mean takes numbers, got {','.join(values.mean)}"
    if not all(math.isfinite(v) for v in mean):
        return f"--mean={','.join(values.mean)} is not a number of pixels; give finite values"
    if not math.isfinite(values.scale) or values.scale <= 0:
        # A scale of 0 makes every photo the same input: an export of all-equal embeddings.
        return f"--scale={values.scale} must be a positive number (e.g. 0.0078125)"
    if values.threshold is not None and math.isnan(values.threshold):
        return "--threshold=nan is not a cosine; give one in [-1, 1]"
    return None


def _class_names(path):
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise errors.UserError(f"--class_names={path}: {e.strerror}") from None


def _threshold(values, model, manifest):
    """(threshold, where it came from) from --threshold or --pairs, or (None, how to get
    one)."""
    if values.threshold is not None:
        return values.threshold, "given at import (--threshold)"
    if not values.pairs:
        return None, "import with --pairs or --threshold to store one"
    serve, _ = signatures.serving_functions(model, manifest)["serving_default"]
    served = signatures.Served(values.prototxt, serve, manifest.image_size, manifest.channels,
                               manifest.resize_mode, manifest.num_classes)
    figures = verification.summarize(*evaluator.photo_scores(
        served, values.pairs, values.image_root, values.batch_size, False, values.align))
    print(f"{values.pairs}: accuracy {figures['verify_acc']:.4f} "
          f"(10-fold, std {figures['verify_acc_std']:.4f}), threshold "
          f"{figures['verify_threshold']:.4f}", flush=True)
    return figures["verify_threshold"], f"chosen at import on {values.pairs}"


def convert(values):
    start = time.perf_counter()
    exporter.check_out(values.out)
    size = tuple(int(v) for v in values.input_size) if values.input_size else None
    imported = importer.build(
        values.prototxt, values.caffemodel, size, values.channel_order,
        tuple(float(v) for v in values.mean), values.scale, values.embedding_layer,
        _class_names(values.class_names))
    model, manifest = imported.model, imported.manifest
    embedding = model.get_layer("embedding").output.shape[-1]
    height, width = manifest.image_size
    raw = {layer.key: layer.blob for layer in model.layers
           if isinstance(layer, caffe_layers.CaffeOutput)}
    print(f"{values.prototxt}: {len(model.layers)} layers, {model.count_params():,} "
          f"parameters, {height}x{width}x{manifest.channels} "
          f"{values.channel_order.upper()} in, a {embedding}-d embedding, "
          f"{manifest.num_classes or 'no'} classes"
          + (f"; every output in serving_raw: {', '.join(raw.values())}" if raw else ""),
          flush=True)
    if imported.caffe_names:
        shown = ", ".join(f"{caffe} as {name}" for name, caffe in
                          list(imported.caffe_names.items())[:3])
        print(f"{len(imported.caffe_names)} layer names are not Keras names ({shown}, ...); "
              f"{export_layout.MARKER} lists each with its Caffe name", flush=True)
    given = _threshold(values, model, manifest)
    kept = exporter.export_saved_model(
        model, manifest, values.out, given=given, keras_file=True,
        notes={export_layout.CAFFE: {"layer_names": imported.caffe_names, "outputs": raw}})
    print(f"SavedModel and model.keras: {values.out} in {time.perf_counter() - start:.1f}s"
          + (f" (your files there stayed: {', '.join(kept)})" if kept else ""))


def main(argv):
    values, rest = cli.parse(argv, define_flags, __doc__)
    problem = _problem(values) or (f"unexpected arguments {rest}" if rest else None)
    if problem:
        sys.exit(f"error: {problem}")
    cli.check_writable(values.out, by_tensorflow=True)
    cli.run(lambda: convert(values), "nothing was written at --out")


if __name__ == "__main__":
    main(sys.argv)
