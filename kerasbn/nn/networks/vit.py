"""arcface_torch's Vision Transformers (backbones/vit.py; get_model's vit_t, vit_s, vit_b):
9x9 patches of the 112x112 face as tokens (a 12x12 grid, the last 4 pixels of each side
unused, as PyTorch's strided convolution leaves them), learned position embeddings, pre-norm
blocks (LayerNorm, 8-head self-attention, LayerNorm, an MLP of 4x the width with ReLU6, each
a residual branch under stochastic depth rising linearly from 0 to --drop_path), a last
LayerNorm, and the field's neck on the flattened tokens: a fully connected layer to the width,
BatchNorm1d, a fully connected layer to the embedding and a last BatchNorm1d, `embedding`
(both eps 2e-5, as vit.py sets them; the norm layers are the run's --norm). In training,
--mask_ratio of the tokens are dropped before the blocks and stand as a learned mask token
after the last norm (kerasbn.nn.transformer).

Its initialisation is arcface_torch's: every fully connected layer N(0, 0.02) with zero bias
(timm's trunc_normal_), position embeddings and mask token N(0, 0.02), LayerNorm 1 and 0,
the patch convolution PyTorch's Conv2d default. --widths sets the token width (vit_t 256,
vit_s and vit_b 512; a multiple of the 8 heads).
"""

import functools

import keras

from kerasbn.nn import registry, transformer
from kerasbn.nn.networks import field, iresnet

# (width, depth) of each network, as get_model builds them; every one has 8 heads.
SIZES = {"vit_t": (256, 12), "vit_s": (512, 12), "vit_b": (512, 24)}
HEADS = 8
PATCH = 9
MLP_RATIO = 4
# get_model's vit_t, vit_s and vit_b: drop_path_rate and mask_ratio 0.1 (the *_dp005_mask0
# variants for WebFace42M are --drop_path=0.05 --mask_ratio=0).
DROP_PATH = 0.1
MASK_RATIO = 0.1
# VisionTransformer.feature's BatchNorm1d(eps=2e-5); its LayerNorms keep PyTorch's 1e-5.
NECK_EPSILON = 2e-5
NORM_EPSILON = 1e-5


def check(settings):
    height, width = settings.image_size
    dim = settings.widths[0] if settings.widths else SIZES[settings.name][0]
    if settings.embedding != "pool" or min(height, width) < PATCH:
        return (f"--model={settings.name} has the field's neck built in (drop --embedding) and "
                f"takes images of at least {PATCH}x{PATCH} ({PATCH}x{PATCH} patches), not "
                f"{height}x{width}; build the dataset at 112x112")
    if dim % HEADS:
        return (f"--widths={dim} for --model={settings.name} must be a multiple of its "
                f"{HEADS} heads")
    if settings.dropout:
        return (f"--model={settings.name} has no dropout (arcface_torch's drop_rate 0); "
                "regularise it with --drop_path")
    return None


def _block(x, index, rate, parts, dense):
    name = f"block{index}"
    y = keras.layers.LayerNormalization(epsilon=NORM_EPSILON, name=f"{name}_norm1")(x)
    y = transformer.SelfAttention(HEADS, kernel_regularizer=parts.l2(),
                                  bias_regularizer=parts.bias_l2(), name=f"{name}_attn",
                                  kernel_initializer=dense["kernel_initializer"])(y)
    y = transformer.DropPath(rate, name=f"{name}_drop1")(y)
    x = keras.layers.Add(name=f"{name}_add1")([x, y])
    y = keras.layers.LayerNormalization(epsilon=NORM_EPSILON, name=f"{name}_norm2")(x)
    y = keras.layers.Dense(MLP_RATIO * x.shape[-1], name=f"{name}_fc1", **dense)(y)
    y = keras.layers.ReLU(6.0, name=f"{name}_relu6")(y)
    y = keras.layers.Dense(x.shape[-1], name=f"{name}_fc2", **dense)(y)
    y = transformer.DropPath(rate, name=f"{name}_drop2")(y)
    return keras.layers.Add(name=f"{name}_add2")([x, y])


def features(inputs, settings, parts, depth):
    """The embedding tensor of a ViT of `depth` blocks on `inputs` ([N, H, W, C])."""
    dim = settings.widths[0]
    drop_path = DROP_PATH if settings.drop_path is None else settings.drop_path
    mask_ratio = MASK_RATIO if settings.mask_ratio is None else settings.mask_ratio
    token_l2 = parts.bias_l2()
    dense = {**field.dense_args(parts, transformer.TOKEN_INIT),
             "bias_regularizer": parts.bias_l2()}
    bound = (PATCH * PATCH * inputs.shape[-1]) ** -0.5
    x = keras.layers.Conv2D(dim, PATCH, PATCH, name="patch_embed",
                            bias_initializer=keras.initializers.RandomUniform(-bound, bound),
                            bias_regularizer=parts.bias_l2(),
                            **field.conv_args(parts, iresnet.LINEAR_INIT))(inputs)
    x = keras.layers.Reshape((-1, dim), name="tokens")(x)
    x = transformer.PositionEmbedding(regularizer=token_l2, name="pos_embed")(x)
    x, restore = transformer.TokenMasking(mask_ratio, name="masking")(x)
    for index in range(depth):
        rate = drop_path * index / (depth - 1) if depth > 1 else 0.0
        x = _block(x, index, rate, parts, dense)
    x = keras.layers.LayerNormalization(epsilon=NORM_EPSILON, name="norm")(x)
    x = transformer.TokenRestoring(regularizer=token_l2, name="mask_token")([x, restore])
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dim, use_bias=False, name="feature_fc", **field.dense_args(
        parts, transformer.TOKEN_INIT))(x)
    x = parts.norm("feature_bn", epsilon=NECK_EPSILON)(x)
    x = keras.layers.Dense(settings.embedding_dim, use_bias=False, name="embedding_fc",
                           **field.dense_args(parts, transformer.TOKEN_INIT))(x)
    return parts.norm("embedding", epsilon=NECK_EPSILON)(x)


for _name, (_dim, _depth) in SIZES.items():
    registry.register_network(
        _name, family="field", made_for=field.INPUT, check=check, widths=(_dim,),
        options=("drop_path", "mask_ratio"))(functools.partial(features, depth=_depth))
