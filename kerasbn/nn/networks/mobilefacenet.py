"""MobileFaceNet (Chen et al. 2018) as insightface's arcface_torch builds it (`mbf`,
backbones/mobilefacenet.py): a 3x3 stride-2 convolution and a grouped 3x3 one; depthwise-
separable bottlenecks (1x1 expand, 3x3 depthwise carrying the stride, 1x1 linear project,
residual where the shape stays) in stages of 1, 4, 6 and 2 at widths 128 and 256 with
expansions 128, 256 and 512; a 1x1 convolution to 512; and the global depthwise convolution
(GDC, a depthwise kernel the size of the last map) before a fully connected layer without
bias to the embedding and a BN, `embedding`. Every convolution block is convolution, BN and
PReLU (the linear ones without PReLU); the norm layers are the run's `--norm`. The grouped
and depthwise convolutions are kerasbn.nn.grouped_conv's, which TensorFlow runs 20-300x
faster on CPUs than a grouped Conv2D.

Its own initialisation is insightface's (_initialize_weights): every convolution and the
fully connected layer from PyTorch's kaiming_normal_ (fan_out, ReLU gain), N(0, 2 / fan_out);
the grouped kernels' fans are Conv2D's, so PyTorch's.
"""

import keras

from kerasbn.nn import grouped_conv
from kerasbn.nn.networks import field

# Bottlenecks in each residual stage (arcface_torch's blocks=(1, 4, 6, 2); the first is the
# single grouped convolution).
BLOCKS = (4, 6, 2)
# insightface's kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated.
KAIMING_FAN_OUT = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
# The two stage widths (64 and 128 x arcface_torch's scale 2), the three bottleneck
# expansions, and the width before the GDC; --widths scales them.
WIDTHS = (128, 256, 128, 256, 512, 512)
STRIDE = field.STRIDE


def _block(x, filters, kernel, stride, groups, name, parts, conv_args, activation=True):
    """Convolution (padded by kernel // 2, as PyTorch's padding), BN and, with `activation`,
    PReLU (slopes start at 0.25, PyTorch's default)."""
    if kernel > 1 and kernel % 2:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    x = grouped_conv.conv2d(filters, kernel, stride, groups, use_bias=False, name=name,
                            **conv_args)(x)
    x = parts.norm(f"{name}_bn")(x)
    if activation:
        x = parts.prelu(f"{name}_prelu")(x)
    return x


def _bottleneck(x, filters, expansion, stride, name, parts, conv_args):
    out = _block(x, expansion, 1, 1, 1, f"{name}_expand", parts, conv_args)
    out = _block(out, expansion, 3, stride, expansion, f"{name}_dw", parts, conv_args)
    out = _block(out, filters, 1, 1, 1, f"{name}_project", parts, conv_args,
                 activation=False)
    if stride == 1 and x.shape[-1] == filters:
        out = keras.layers.Add(name=f"{name}_add")([x, out])
    return out


def features(inputs, settings, parts):
    """The embedding tensor of MobileFaceNet on `inputs` ([N, H, W, C], H and W multiples of
    16), its widths `settings.widths` (WIDTHS' order)."""
    norm_layer, conv_args = parts.norm, field.conv_args(parts, KAIMING_FAN_OUT)
    dense_args = field.dense_args(parts, KAIMING_FAN_OUT)
    low, high, expand1, expand2, expand3, separable = settings.widths
    x = _block(inputs, low, 3, 2, 1, "stem", parts, conv_args)
    x = _block(x, low, 3, 1, low // 2, "stem_grouped", parts, conv_args)
    stages = [(low, expand1, 2, 1), (low, expand1, 1, BLOCKS[0]), (high, expand2, 2, 1),
              (high, expand2, 1, BLOCKS[1]), (high, expand3, 2, 1), (high, expand2, 1,
                                                                    BLOCKS[2])]
    for stage, (filters, expansion, stride, count) in enumerate(stages, start=1):
        for index in range(count):
            x = _bottleneck(x, filters, expansion, stride, f"stage{stage}_{index + 1}",
                            parts, conv_args)
    x = _block(x, separable, 1, 1, 1, "separable", parts, conv_args)
    height, width = x.shape[1], x.shape[2]
    x = grouped_conv.conv2d(separable, (height, width), groups=separable, use_bias=False,
                            name="gdc", **conv_args)(x)
    x = keras.layers.Flatten(name="flatten")(norm_layer("gdc_bn")(x))
    x = keras.layers.Dense(settings.embedding_dim, use_bias=False, name="embedding_fc",
                           **dense_args)(x)
    return norm_layer("embedding")(x)


field.register("mobilefacenet", features, widths=WIDTHS)
