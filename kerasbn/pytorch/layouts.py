"""Where each weight of arcface_torch's backbones lives in kerasbn's network of the same
definition, both ways: {arcface_torch module: kerasbn layer} per network (`modules`), and
each weight's array in either layout (`to_keras`, `to_torch`).

PyTorch keeps a convolution's kernel as [out, in / groups, kh, kw] and Keras as
[kh, kw, in / groups, out]; a fully connected weight as [out, in] and Keras as [in, out],
and where it follows a flattened feature map, PyTorch flattens C, H, W and Keras H, W, C.
PReLU's slopes are [C] and Keras's [1, 1, C]. BN's weight, bias, running_mean and
running_var are Keras's gamma, beta, moving_mean and moving_variance; LayerNorm's weight and
bias its gamma and beta. A ViT's pos_embed and mask_token are parameters of the network
itself, keyed by their own names.
"""

from kerasbn.nn.networks import iresnet, mobilefacenet, vit

# arcface_torch's get_model names and kerasbn's networks.
NETWORKS = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100",
            "mbf": "mobilefacenet", "vit_t": "vit_t", "vit_s": "vit_s", "vit_b": "vit_b"}
# A Keras weight's path below its layer and its key below the module's prefix ("" for a
# parameter keyed by the prefix itself).
SUFFIXES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
            "moving_mean": "running_mean", "moving_variance": "running_var", "alpha": "weight",
            "qkv/kernel": "qkv.weight", "proj/kernel": "proj.weight", "proj/bias": "proj.bias",
            "position": "", "mask_token": ""}
# The layer a flattened feature map feeds.
FLATTENED = ("embedding_fc", "feature_fc")
# torch.nn.BatchNorm's default eps, which arcface_torch's networks keep but for the ViT neck.
TORCH_EPSILON = 1e-5


def _iresnet(layers):
    names = {"conv1": "stem", "bn1": "stem_bn", "prelu": "stem_prelu", "bn2": "neck_bn",
             "fc": "embedding_fc", "features": "embedding"}
    for stage, blocks in enumerate(layers, start=1):
        for index in range(blocks):
            torch_block, ours = f"layer{stage}.{index}", f"stage{stage}_{index + 1}"
            names.update({f"{torch_block}.{part}": f"{ours}_{part}"
                          for part in ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")})
            if index == 0:  # every stage's first block strides 2: its shortcut is a conv
                names.update({f"{torch_block}.downsample.0": f"{ours}_down",
                              f"{torch_block}.downsample.1": f"{ours}_down_bn"})
    return names


def _conv_block(prefix, ours, activation=True):
    """A ConvBlock (Conv2d, BatchNorm2d, PReLU) or LinearBlock's layers."""
    names = {f"{prefix}.layers.0": ours, f"{prefix}.layers.1": f"{ours}_bn"}
    if activation:
        names[f"{prefix}.layers.2"] = f"{ours}_prelu"
    return names


def _mobilefacenet():
    names = {**_conv_block("layers.0", "stem"), **_conv_block("layers.1", "stem_grouped"),
             **_conv_block("conv_sep", "separable"),
             **_conv_block("features.layers.0", "gdc", activation=False),
             "features.layers.2": "embedding_fc", "features.layers.3": "embedding"}
    # arcface_torch's layers[2:8]: a strided DepthWise, then a Residual of DepthWise blocks,
    # three times; kerasbn's stages 1-6.
    residuals = (None, mobilefacenet.BLOCKS[0], None, mobilefacenet.BLOCKS[1], None,
                 mobilefacenet.BLOCKS[2])
    for stage, blocks in enumerate(residuals, start=1):
        torch_stage = f"layers.{stage + 1}"
        prefixes = [torch_stage] if blocks is None else [f"{torch_stage}.layers.{i}"
                                                         for i in range(blocks)]
        for index, prefix in enumerate(prefixes, start=1):
            ours = f"stage{stage}_{index}"
            names.update({**_conv_block(f"{prefix}.layers.0", f"{ours}_expand"),
                          **_conv_block(f"{prefix}.layers.1", f"{ours}_dw"),
                          **_conv_block(f"{prefix}.layers.2", f"{ours}_project",
                                        activation=False)})
    return names


def _vit(depth):
    names = {"patch_embed.proj": "patch_embed", "pos_embed": "pos_embed",
             "mask_token": "mask_token", "norm": "norm", "feature.0": "feature_fc",
             "feature.1": "feature_bn", "feature.2": "embedding_fc", "feature.3": "embedding"}
    for index in range(depth):
        block, ours = f"blocks.{index}", f"block{index}"
        names.update({f"{block}.norm1": f"{ours}_norm1", f"{block}.attn": f"{ours}_attn",
                      f"{block}.norm2": f"{ours}_norm2", f"{block}.mlp.fc1": f"{ours}_fc1",
                      f"{block}.mlp.fc2": f"{ours}_fc2"})
    return names


def modules(network):
    """{arcface_torch module name: kerasbn layer name} of arcface_torch network `network`
    (a NETWORKS key)."""
    ours = NETWORKS[network]
    if ours in iresnet.LAYERS:
        return _iresnet(iresnet.LAYERS[ours])
    if ours in vit.SIZES:
        return _vit(vit.SIZES[ours][1])
    return _mobilefacenet()


def flattened(layers, layer_name):
    """The [H, W, C] (or [tokens, width]) map that layer `layer_name` takes flattened, from
    the model's {name: layer} `layers`; None where it takes no flattened map."""
    if layer_name not in FLATTENED or "flatten" not in layers:
        return None
    return tuple(layers["flatten"].input.shape[1:])


def local_name(weight, layer):
    """Keras `weight`'s path below its `layer` (a SUFFIXES key)."""
    marker = layer.name + "/"
    return weight.path[weight.path.rindex(marker) + len(marker):] \
        if marker in weight.path else weight.name


def key(prefix, weight, layer):
    """The state dict key of Keras `weight` of `layer`, whose module is `prefix`."""
    suffix = SUFFIXES[local_name(weight, layer)]
    return f"{prefix}.{suffix}" if suffix else prefix


def to_keras(value, shape, flattened=None):
    """PyTorch's array `value` in the layout of a Keras weight of `shape`; `flattened`: the
    [H, W, C] map a fully connected layer takes flattened."""
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and len(shape) == 2:
        if flattened is not None and len(flattened) == 3:
            height, width, channels = flattened
            value = value.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
            return value.reshape(value.shape[0], -1).T
        return value.T
    return value.reshape(shape)


def to_torch(value, local, flattened=None):
    """Keras's array `value` of the weight `local` (a SUFFIXES key) in PyTorch's layout (the
    inverse of `to_keras`)."""
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        if flattened is not None and len(flattened) == 3:
            height, width, channels = flattened
            value = value.T.reshape(-1, height, width, channels).transpose(0, 3, 1, 2)
            return value.reshape(value.shape[0], -1)
        return value.T
    return value.reshape(-1) if local == "alpha" else value


def torch_epsilon(network, layer_name):
    """The eps of arcface_torch's BatchNorm at kerasbn layer `layer_name` of arcface_torch
    network `network`."""
    if NETWORKS[network] in vit.SIZES and layer_name in ("feature_bn", "embedding"):
        return vit.NECK_EPSILON
    return TORCH_EPSILON
