"""kerasbn: the Batch Normalization face-recognition study, rebuilt on TensorFlow/Keras.

Importing the package imports TensorFlow without its start-up chatter (see `console`).
"""

from kerasbn.utils import console

console.import_tensorflow()

__version__ = "0.1.0"
