"""An arcface_torch backbone's state dict (backbones/iresnet.py's names) as kerasbn's own
network of the same definition, ready to serve and to train on as `--backbone`: the Keras
model takes RGB pixels (0-255) and does arcface_torch's preprocessing, (x - 127.5) / 127.5,
itself, as an imported Caffe network does, so the export and `train --backbone` treat both
alike. Its BN layers are kerasbn's `torch` norm, carrying the running statistics."""

import math

import keras
import numpy as np

from kerasbn.data.manifest import Manifest
from kerasbn.nn import caffe_layers, models, registry
from kerasbn.nn.networks import iresnet
from kerasbn.pytorch.state_dict import StateDictError

# arcface_torch's get_model names and kerasbn's networks.
NETWORKS = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100"}
# arcface_torch's transform: ToTensor then Normalize(mean 0.5, std 0.5), on RGB.
MEAN, SCALE = 127.5, 1 / 127.5
_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
       "running_var": "moving_variance"}


def iresnet_names(layers):
    """{arcface_torch module name: kerasbn layer name} of an IResNet of `layers` blocks per
    stage."""
    names = {"conv1": "stem", "bn1": "stem_bn", "prelu": "stem_prelu", "bn2": "neck_bn",
             "fc": "embedding_fc", "features": "embedding"}
    for stage, blocks in enumerate(layers, start=1):
        for index in range(blocks):
            torch_block, ours = f"layer{stage}.{index}", f"stage{stage}_{index + 1}"
            names.update({f"{torch_block}.{part}": f"{ours}_{part}"
                          for part in ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")})
            names.update({f"{torch_block}.downsample.0": f"{ours}_down",
                          f"{torch_block}.downsample.1": f"{ours}_down_bn"})
    return names


def _shape(state):
    """(widths, embedding_dim, image side) of the IResNet whose weights `state` holds."""
    stages = [state[f"layer{s}.0.conv1.weight"].shape[0] for s in range(1, 5)]
    embedding, inputs = state["fc.weight"].shape
    side = math.isqrt(inputs // stages[-1]) * iresnet.STRIDE
    return (state["conv1.weight"].shape[0], *stages), embedding, side


def build(state, name):
    """(Keras model from RGB pixels to the embedding, its Manifest) of arcface_torch network
    `name` (r18, r34, r50, r100) holding the weights of `state` ({key: array})."""
    if name not in NETWORKS:
        raise StateDictError(f"--network={name}: kerasbn imports arcface_torch's "
                             f"{', '.join(NETWORKS)} (not yet mbf or the ViTs)")
    network = NETWORKS[name]
    try:
        widths, embedding, side = _shape(state)
    except KeyError as e:
        raise StateDictError(f"the state dict has no {e.args[0]}: is it an arcface_torch "
                             f"{name} backbone?") from None
    settings = models.NetworkSettings(
        name=network, num_classes=2, image_size=(side, side), channels=3, widths=widths,
        dropout=0.0, norm="torch", embedding_dim=embedding)
    pixels = keras.Input((side, side, 3), name="image")
    x = caffe_layers.CaffeInput(False, (MEAN,), SCALE, name="caffe_input")(pixels)
    x = registry.NETWORKS[network].features(x, settings, models.Parts(settings))
    model = keras.Model(pixels, x, name=name)
    _load(model, state, iresnet_names(iresnet.LAYERS[network]), name)
    manifest = Manifest(image_size=(side, side), channels=3, encoding="raw", class_names=(),
                        splits={}, mean=(0.0,) * 3, std=(1.0,) * 3, resize_mode="stretch")
    return model, manifest


def _arrays(layer, state, prefix):
    """The values of `layer`'s weights, in its order, from `state`'s `prefix`.* arrays."""
    values = []
    for weight in layer.weights:
        if weight.name == "kernel" and len(weight.shape) == 4:
            values.append(state[f"{prefix}.weight"].transpose(2, 3, 1, 0))
        elif weight.name == "kernel":
            # PyTorch flattens C, H, W; Keras H, W, C.
            out, inputs = state[f"{prefix}.weight"].shape
            channels = state["bn2.weight"].shape[0]
            side = math.isqrt(inputs // channels)
            values.append(state[f"{prefix}.weight"].reshape(out, channels, side, side)
                          .transpose(2, 3, 1, 0).reshape(inputs, out))
        elif weight.name == "alpha":
            values.append(state[f"{prefix}.weight"].reshape(weight.shape))
        elif weight.name == "bias":
            values.append(state[f"{prefix}.bias"])
        else:
            key = next(k for k, v in _BN.items() if v == weight.name)
            values.append(state[f"{prefix}.{key}"])
    return values


def _load(model, state, names, name):
    """Sets each layer of `model` named in `names` ({module: layer}) from `state`; a key of
    the state dict that no layer takes, or a layer whose key is missing, is named."""
    ours = {layer.name: layer for layer in model.layers}
    taken = set()
    for prefix, layer_name in names.items():
        if layer_name not in ours:
            continue
        layer = ours[layer_name]
        try:
            values = _arrays(layer, state, prefix)
        except KeyError as e:
            raise StateDictError(f"the state dict has no {e.args[0]}, which an arcface_torch "
                                 f"{name} has: is --network right?") from None
        for weight, value in zip(layer.weights, values):
            if tuple(weight.shape) != value.shape:
                raise StateDictError(f"{prefix}: shape {value.shape} where kerasbn's {name} "
                                     f"takes {tuple(weight.shape)}")
        layer.set_weights([np.asarray(v, np.float32) for v in values])
        taken.update(k for k in state if k.startswith(prefix + "."))
    left = [k for k in state if k not in taken and not k.endswith("num_batches_tracked")]
    if left:
        raise StateDictError(f"the state dict has {left[0]}, which an arcface_torch {name} "
                             "does not: is --network right?")
