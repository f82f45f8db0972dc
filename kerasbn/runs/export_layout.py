"""The names an export writes, declared once: replacing an export (`export`, `train
--overwrite`) removes these and nothing else, so a user's own file beside them survives."""

from kerasbn.nn.networks import imported

# Written into every SavedModel export: what a photo must be made into before the network
# sees it, and the mark that lets a later export replace this one and nothing else.
MARKER = "kerasbn_export.json"
# The marker's list of the face detector's variables (serve_photo's), which are not the
# trained network's.
DETECTOR_VARIABLES = "detector_variables"
# The marker's note of where the verification threshold came from.
THRESHOLD_SOURCE = "threshold_source"
# The marker's record of an imported Caffe network: its layers' Caffe names where Keras took
# others, and its outputs' (serving_raw's) Caffe blob names.
CAFFE = "caffe"
# The marker's record of an arcface_torch backbone brought in: its state dict and network.
PYTORCH = "pytorch"
# The Keras model file an imported network's export also holds (caffe_import, torch_import).
KERAS_MODEL = imported.FILE
# What a SavedModel export holds: TensorFlow's entries, the marker and, for an imported
# network, its Keras model file.
SAVED_MODEL = ("saved_model.pb", "fingerprint.pb", "variables", "assets", MARKER, KERAS_MODEL)
# The fixed-size core's file suffix per format, and the suffix of the JSON beside it.
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx", "pth": ".pth"}
SIDECAR = ".json"


def portable_files(path):
    """The files a fixed-size core at `path` consists of: the model and its JSON."""
    return path, path + SIDECAR
