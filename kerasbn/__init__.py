"""kerasbn: the Batch Normalization face-recognition study, rebuilt on TensorFlow/Keras."""

__version__ = "0.1.0"
