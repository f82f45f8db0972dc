"""The names an export writes, declared once: replacing an export (`export`, `train
--overwrite`) removes these and nothing else, so a user's own file beside them survives."""

# Written into every SavedModel export: what a photo must be made into before the network
# sees it, and the mark that lets a later export replace this one and nothing else.
MARKER = "kerasbn_export.json"
# The marker's list of the face detector's variables (serve_photo's), which are not the
# trained network's.
DETECTOR_VARIABLES = "detector_variables"
# What a SavedModel export holds: TensorFlow's entries and the marker.
SAVED_MODEL = ("saved_model.pb", "fingerprint.pb", "variables", "assets", MARKER)
# The fixed-size core's file suffix per format, and the suffix of the JSON beside it.
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx"}
SIDECAR = ".json"


def portable_files(path):
    """The files a fixed-size core at `path` consists of: the model and its JSON."""
    return path, path + SIDECAR
