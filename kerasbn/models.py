"""The study's networks (REFERENCE.md section 1), built by name.

`baseline`: the CASIA-WebFace net less one block; `bn`: the study's BN network (BN after the
first convolution of each block, block 2's conv 64 removed, no dropout); `bn_all`: the same
with BN after every convolution. All convolutions 3x3 "same"; 2x2 max pools rounding up like
Caffe (50 -> 25 -> 13 -> 7); a global average pool gives the 320-d layer `embedding`.
Logits are float32 under mixed precision.
"""

import keras

from kerasbn import norms

# Each block: (convolution widths, whether each convolution is followed by BN).
_BLOCKS = {
    "baseline": [((32, 64), (False, False)), ((64, 128), (False, False)),
                 ((96, 192), (False, False)), ((160, 320), (False, False))],
    "bn": [((32, 64), (True, False)), ((128,), (True,)),
           ((96, 192), (True, False)), ((160, 320), (True, False))],
    "bn_all": [((32, 64), (True, True)), ((128,), (True,)),
               ((96, 192), (True, True)), ((160, 320), (True, True))],
}
DEFAULT_DROPOUT = {"baseline": 0.4, "bn": 0.0, "bn_all": 0.0}
MODELS = tuple(_BLOCKS)


def default_widths(name):
    """The study's convolution widths of network `name`, in order."""
    return [w for widths, _ in _BLOCKS[name] for w in widths]


def build(name, num_classes, image_size=(50, 50), channels=1, widths=None, dropout=None,
          norm="keras", bn_momentum=0.99, bn_epsilon=1e-3, weight_decay=0.0,
          decay_biases=False):
    """Builds network `name` taking normalised float images [N, H, W, channels] to logits.

    `weight_decay` is Caffe's: an L2 penalty of weight_decay / 2 on every kernel (and bias
    when `decay_biases`; BN parameters are not decayed). `dropout=None` takes the network's
    default.
    """
    if name not in _BLOCKS:
        raise ValueError(f"unknown --model {name!r}; choose one of {', '.join(MODELS)}")
    widths = list(widths or default_widths(name))
    if len(widths) != len(default_widths(name)):
        raise ValueError(f"--widths for {name} takes {len(default_widths(name))} values, "
                         f"got {len(widths)}")
    dropout = DEFAULT_DROPOUT[name] if dropout is None else dropout
    regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    bias_regularizer = regularizer if decay_biases else None
    inputs = keras.Input((*image_size, channels), name="image")
    x = inputs
    width_iter = iter(widths)
    for block, (convs, with_bn) in enumerate(_BLOCKS[name], start=1):
        for index, has_bn in enumerate(with_bn, start=1):
            layer = f"conv{block}_{index}"
            x = keras.layers.Conv2D(next(width_iter), 3, padding="same", use_bias=not has_bn,
                                    kernel_initializer="he_normal",
                                    kernel_regularizer=regularizer,
                                    bias_regularizer=bias_regularizer, name=layer)(x)
            if has_bn:
                x = norms.make_norm(norm, bn_momentum, bn_epsilon, name_prefix=f"{layer}_bn")(x)
            x = keras.layers.ReLU(name=f"{layer}_relu")(x)
        if block < len(_BLOCKS[name]):
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{block}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, kernel_regularizer=regularizer,
                                bias_regularizer=bias_regularizer, dtype="float32",
                                name="logits")(x)
    return keras.Model(inputs, logits, name=name)
