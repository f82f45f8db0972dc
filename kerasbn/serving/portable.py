"""The network's fixed-size core as a LiteRT (.tflite) or ONNX file, checked against Keras.

A phone or a non-TensorFlow service gets the part of the network that every runtime can
run: a normalised float32 batch [N, H, W, C] in (the manifest's mean/std already applied),
the L2-normalised `embedding` and the `probabilities` out. Decoding, gray conversion,
resizing and the class names stay with the caller; the JSON file written beside the model
says what they must be. The core is built from a float32 copy of the trained weights: a
network trained in mixed precision would otherwise carry its bfloat16 or float16
arithmetic into the file and could not be compared with Keras to 1e-4.

Each file is converted by Keras's own exporter (`model.export(format=...)`: TensorFlow's
LiteRT converter, tf2onnx), restricted for LiteRT to its built-in operators so that the
plain interpreter of a phone runs it, and then run by the runtime a user will run it with
(ai-edge-litert's interpreter, onnxruntime) on the same images as Keras; a file whose
outputs differ by more than TOLERANCE is not written.
"""

import importlib.util
import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from kerasbn.data import pipeline, records
from kerasbn.nn import models
from kerasbn.runs import export_layout
from kerasbn.utils import atomic, console

TOLERANCE = 1e-4
# Per format: the file's suffix, the modules that write and run it, and the extra naming
# their pip packages.
FORMATS = {
    "litert": (export_layout.SUFFIXES["litert"], ("ai_edge_litert",), "litert"),
    "onnx": (export_layout.SUFFIXES["onnx"], ("tf2onnx", "onnxruntime"), "onnx"),
}
PACKAGES = {"ai_edge_litert": "ai-edge-litert", "tf2onnx": "tf2onnx",
            "onnxruntime": "onnxruntime"}
CHECK_IMAGES = 64


def require(fmt):
    """Raises DataError naming the pip packages `fmt` needs when any is not installed."""
    _, modules, extra = FORMATS[fmt]
    missing = [PACKAGES[m] for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise records.DataError(
            f"--format={fmt} needs {' and '.join(missing)}, not installed here: "
            f"pip install 'kerasbn[{extra}]' (or pip install {' '.join(missing)})")


def float32_core(config, model):
    """A float32 copy of the trained `model` as its `core`."""
    saved = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = models.build_from(config.network())
        copy.set_weights(model.get_weights())
        return core(copy, classifier=True)
    finally:
        keras.mixed_precision.set_global_policy(saved)


def core(model, classifier):
    """`model` (float32) mapping an image batch to {"embedding": L2-normalised,
    "probabilities": softmax of the logits (with a `classifier`)}."""
    outputs = {"embedding": keras.layers.UnitNormalization(name="embedding_l2")(
        model.get_layer("embedding").output)}
    if classifier:
        outputs["probabilities"] = keras.layers.Softmax(name="probabilities")(
            model.outputs[0])
    return keras.Model(model.inputs, outputs, name="core")


def check_images(config, manifest):
    """(normalised float32 images, where they came from) to compare the runtimes on: the
    first CHECK_IMAGES of the test split, or seeded noise when its shards are absent."""
    try:
        images, _ = next(iter(pipeline.test_dataset(config.data_dir, manifest, CHECK_IMAGES)))
        return images.numpy(), "test images"
    except (records.DataError, tf.errors.OpError):
        shape = (CHECK_IMAGES, *manifest.image_size, manifest.channels)
        return np.random.default_rng(0).standard_normal(shape, np.float32), "noise images"


def convert(core, path, fmt):
    """Writes `core` to `path` with Keras's exporter for `fmt`, quietly."""
    with warnings.catch_warnings():
        # tf2onnx's numpy-2 shim and Keras's input-structure notice say nothing to a user.
        warnings.simplefilter("ignore")
        if fmt == "litert":
            core.export(path, format="litert", verbose=False,
                        target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
        else:
            core.export(path, format="onnx", verbose=False)


def run_file(path, fmt, images):
    """{output name: array} of the file at `path`, run by the runtime of `fmt`."""
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        # The interpreter announces its CPU delegate on standard error from C++.
        with console.silenced_stderr():
            return Interpreter(model_path=path).get_signature_runner()(image=images)
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": images})))


def sidecar(path):
    """The JSON file beside a model file, saying what its input must be."""
    return export_layout.portable_files(path)[1]


def is_portable(path):
    """Whether `path` is a model file that kerasbn wrote (its sidecar is there)."""
    return os.path.isfile(sidecar(path))


def write(core, path, fmt, images, description):
    """Converts `core` into `path` through a temporary file, runs it on `images` and keeps it
    only when every output is within TOLERANCE of Keras's; writes the sidecar with
    `description` and the measured differences. Returns the differences. `path` ends with
    the format's suffix (Keras's LiteRT exporter insists on it)."""
    parent, name = os.path.split(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial" + FORMATS[fmt][0],
                                   dir=parent)
    os.close(handle)
    # Keras's ONNX exporter reads the input signature of a model that has been called.
    expected = core({"image": images}, training=False)
    try:
        convert(core, tmp, fmt)
        got = run_file(tmp, fmt, images)
        measured = {name: float(np.max(np.abs(got[name] - value.numpy())))
                    for name, value in expected.items()}
        worst = max(measured.values())
        if not worst <= TOLERANCE:
            raise records.DataError(
                f"the {fmt} file's outputs differ from Keras's by up to {worst:.2g} (more than "
                f"{TOLERANCE:g}); nothing written. Report it with the run's config.json")
        if os.path.exists(sidecar(path)):
            os.remove(sidecar(path))
        atomic.follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    atomic.write_json(sidecar(path), {**description, "format": fmt,
                                      "max_abs_difference": measured})
    return measured
