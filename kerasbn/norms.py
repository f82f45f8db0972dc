"""Batch Normalization implementations behind one factory, `make_norm(name, ...)`.

Conventions of the options: `momentum` is Keras's (the weight of the old running statistic;
PyTorch's momentum is 1 - m; Caffe's moving_average_fraction is m), `epsilon` is added to the
variance before the square root.
"""

import keras

NORMS = ("keras",)


def make_norm(name, momentum=0.99, epsilon=1e-3, name_prefix=None):
    """Returns a new normalisation layer of implementation `name` over the last axis."""
    if name == "keras":
        # Keras keeps moving statistics in float32 under mixed precision on its own.
        return keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon,
                                               name=name_prefix)
    raise ValueError(f"unknown --norm {name!r}; choose one of {', '.join(NORMS)}")
