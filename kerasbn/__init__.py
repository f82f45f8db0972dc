"""kerasbn: the Batch Normalization face-recognition study, rebuilt on TensorFlow/Keras.

Importing the package imports TensorFlow without its start-up chatter (see `utils.console`).
The modules of the documented Python API (README's "Read a dataset from Python") are also
reachable under their first names, `from kerasbn import pipeline, records`.
"""

import importlib

from kerasbn.utils import console

console.import_tensorflow()

__version__ = "0.1.0"

_DOCUMENTED = {"pipeline": "kerasbn.data.pipeline", "records": "kerasbn.data.records"}


def __getattr__(name):
    if name in _DOCUMENTED:
        return importlib.import_module(_DOCUMENTED[name])
    raise AttributeError(f"module 'kerasbn' has no attribute {name!r}")
