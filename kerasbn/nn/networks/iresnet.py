"""insightface's IResNet (arcface_torch, backbones/iresnet.py), the backbone the field trains
ArcFace with: a 3x3 stem of 64 with BN and PReLU; four stages of improved residual blocks
(BN, 3x3 conv, BN, PReLU, 3x3 conv carrying the stride, BN; a 1x1 conv and BN on the
shortcut where the shape changes), each stage halving the size; then BN, dropout, the
flattened map through a fully connected layer to the embedding and a last BN, `embedding`,
whose scale stays 1 as insightface fixes it.

Convolutions pad explicitly by one pixel, as PyTorch's padding=1 does (Keras's "same" pads
a stride-2 convolution on one side only). PReLU starts at 0.25, PyTorch's default. The norm
layers are the run's `--norm`, so every BN semantics applies to these networks too.

Its own initialisation is insightface's: every convolution N(0, 0.1), BN's scale 1 and shift
0, the fully connected layer PyTorch's nn.Linear default (weight and bias uniform on
+-1/sqrt(fan_in)); with `zero_init_residual`, each block's `bn2` scale starts at 0, the BN
insightface zeroes (its IBasicBlock's second, after the first convolution).
"""

import functools
import math

import keras

from kerasbn.nn.networks import field

# Blocks per stage, by network.
LAYERS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
          "iresnet100": (3, 13, 30, 3)}
# The stem's width, then each stage's (--widths scales them, e.g. half for CPU trials).
WIDTHS = (64, 64, 128, 256, 512)
STRIDE = field.STRIDE
# insightface's nn.init.normal_(m.weight, 0, 0.1) of every Conv2d.
CONV_INIT = keras.initializers.RandomNormal(0.0, 0.1)
# PyTorch's nn.Linear default, kaiming_uniform_(a=sqrt(5)): uniform on +-1/sqrt(fan_in).
LINEAR_INIT = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")


def _conv(x, filters, kernel, stride, name, conv_args):
    if kernel == 3:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, kernel, stride, use_bias=False, name=name,
                               **conv_args)(x)


def _block(x, filters, stride, name, parts, conv_args, zero_init_residual=False):
    shortcut, norm_layer = x, parts.norm
    out = norm_layer(f"{name}_bn1")(x)
    out = _conv(out, filters, 3, 1, f"{name}_conv1", conv_args)
    bn2 = norm_layer(f"{name}_bn2")
    out = bn2(out)
    if zero_init_residual and getattr(bn2, "gamma", None) is not None:
        bn2.gamma.assign(keras.ops.zeros_like(bn2.gamma))
    out = parts.prelu(f"{name}_prelu")(out)
    out = _conv(out, filters, 3, stride, f"{name}_conv2", conv_args)
    out = norm_layer(f"{name}_bn3")(out)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, f"{name}_down", conv_args)
        shortcut = norm_layer(f"{name}_down_bn")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


def features(inputs, settings, parts, layers):
    """The embedding tensor of the IResNet of `layers` blocks per stage on `inputs`
    ([N, H, W, C], H and W multiples of 16), its widths `settings.widths` (stem, then the
    four stages)."""
    widths, norm_layer = settings.widths, parts.norm
    conv_args = field.conv_args(parts, CONV_INIT)
    x = _conv(inputs, widths[0], 3, 1, "stem", conv_args)
    x = parts.prelu("stem_prelu")(norm_layer("stem_bn")(x))
    for stage, (blocks, filters) in enumerate(zip(layers, widths[1:]), start=1):
        for index in range(blocks):
            x = _block(x, filters, 2 if index == 0 else 1, f"stage{stage}_{index + 1}",
                       parts, conv_args, settings.zero_init_residual)
    x = norm_layer("neck_bn")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if settings.dropout:
        x = keras.layers.Dropout(settings.dropout, name="dropout")(x)
    bound = 1 / math.sqrt(x.shape[-1])
    x = keras.layers.Dense(settings.embedding_dim, name="embedding_fc",
                           bias_initializer=keras.initializers.RandomUniform(-bound, bound),
                           bias_regularizer=parts.bias_l2(),
                           **field.dense_args(parts, LINEAR_INIT))(x)
    # insightface fixes this BN's weight at 1 (features.weight.requires_grad = False).
    return norm_layer("embedding", fixed_scale=True)(x)


for _name, _layers in LAYERS.items():
    field.register(_name, functools.partial(features, layers=_layers), widths=WIDTHS)
