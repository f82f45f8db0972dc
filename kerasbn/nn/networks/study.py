"""The study's networks (docs/reference.md section 1).

`baseline`: the CASIA-WebFace net less one block; `bn`: the study's BN network (BN after the
first convolution of each block, block 2's conv 64 removed, no dropout); `bn_all`: the same
with BN after every convolution. All convolutions 3x3 "same" with he_normal kernels; 2x2 max
pools rounding up like Caffe (50 -> 25 -> 13 -> 7); a global average pool gives the 320-d
layer `embedding` (`embedding="pool"`), or, with `embedding="bn_fc"`, feeds insightface's
neck: BN, dropout, a fully connected layer to `embedding_dim` and BN, the last named
`embedding`.
"""

import functools

import keras

from kerasbn.nn import registry

# The feature the classifier takes: the pooled layer, or insightface's neck on it.
EMBEDDINGS = ("pool", "bn_fc")
# Each block: (convolution widths, whether each convolution is followed by BN).
BLOCKS = {
    "baseline": [((32, 64), (False, False)), ((64, 128), (False, False)),
                 ((96, 192), (False, False)), ((160, 320), (False, False))],
    "bn": [((32, 64), (True, False)), ((128,), (True,)),
           ((96, 192), (True, False)), ((160, 320), (True, False))],
    "bn_all": [((32, 64), (True, True)), ((128,), (True,)),
               ((96, 192), (True, True)), ((160, 320), (True, True))],
}
DROPOUT = {"baseline": 0.4, "bn": 0.0, "bn_all": 0.0}


def check(settings):
    if settings.embedding not in EMBEDDINGS:
        return (f"unknown --embedding {settings.embedding!r}; choose one of "
                f"{', '.join(EMBEDDINGS)}")
    return None


def features(inputs, settings, parts, blocks):
    """The embedding of the study's network of `blocks` on `inputs`."""
    x = inputs
    width_iter = iter(settings.widths)
    for block, (_, with_bn) in enumerate(blocks, start=1):
        for index, has_bn in enumerate(with_bn, start=1):
            layer = f"conv{block}_{index}"
            x = keras.layers.Conv2D(next(width_iter), 3, padding="same", use_bias=not has_bn,
                                    kernel_initializer=parts.filler("he_normal"),
                                    kernel_regularizer=parts.l2(),
                                    bias_regularizer=parts.bias_l2(), name=layer)(x)
            if has_bn:
                x = parts.norm(f"{layer}_bn")(x)
            x = keras.layers.ReLU(name=f"{layer}_relu")(x)
        if block < len(blocks):
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{block}")(x)
    if settings.embedding == "pool":
        x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
        if settings.dropout:
            x = keras.layers.Dropout(settings.dropout, name="dropout")(x)
        return x
    x = parts.norm("pool_bn")(keras.layers.GlobalAveragePooling2D(name="pool")(x))
    if settings.dropout:
        x = keras.layers.Dropout(settings.dropout, name="dropout")(x)
    x = keras.layers.Dense(settings.embedding_dim, kernel_regularizer=parts.l2(),
                           bias_regularizer=parts.bias_l2(), name="embedding_fc",
                           kernel_initializer=parts.filler())(x)
    return parts.norm("embedding")(x)


for _name, _blocks in BLOCKS.items():
    registry.register_network(
        _name, family="study", widths=tuple(w for widths, _ in _blocks for w in widths),
        dropout=DROPOUT[_name], check=check)(functools.partial(features, blocks=_blocks))
