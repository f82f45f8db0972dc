"""An arcface_torch backbone's state dict as kerasbn's own network of the same definition
(IResNet, MobileFaceNet, ViT), ready to serve and to train on as `--backbone`: the Keras
model takes RGB pixels (0-255) and does arcface_torch's preprocessing, (x - 127.5) / 127.5,
itself, as an imported Caffe network does, so the export and `train --backbone` treat both
alike. Its BN layers are kerasbn's `torch` norm, carrying the running statistics."""

import math

import keras
import numpy as np

from kerasbn.data.manifest import Manifest
from kerasbn.nn import caffe_layers, models, registry
from kerasbn.nn.networks import iresnet, mobilefacenet, vit
from kerasbn.pytorch import layouts
from kerasbn.pytorch.state_dict import StateDictError

NETWORKS = layouts.NETWORKS
# arcface_torch's transform: ToTensor then Normalize(mean 0.5, std 0.5), on RGB.
MEAN, SCALE = 127.5, 1 / 127.5


def _iresnet_shape(state):
    stages = [state[f"layer{s}.0.conv1.weight"].shape[0] for s in range(1, 5)]
    embedding, inputs = state["fc.weight"].shape
    side = math.isqrt(inputs // stages[-1]) * iresnet.STRIDE
    return (state["conv1.weight"].shape[0], *stages), embedding, side


def _mobilefacenet_shape(state):
    out = lambda prefix: state[f"{prefix}.weight"].shape[0]
    widths = (out("layers.0.layers.0"), out("layers.4.layers.2.layers.0"),
              out("layers.2.layers.0.layers.0"), out("layers.4.layers.0.layers.0"),
              out("layers.6.layers.0.layers.0"), out("conv_sep.layers.0"))
    side = state["features.layers.0.layers.0.weight"].shape[-1] * mobilefacenet.STRIDE
    return widths, out("features.layers.2"), side


def _vit_shape(state):
    grid = math.isqrt(state["pos_embed"].shape[1])
    # arcface_torch's ViTs take 112x112 faces, whose 9x9 patches leave 4 pixels unused.
    side = 112 if grid * vit.PATCH <= 112 < (grid + 1) * vit.PATCH else grid * vit.PATCH
    return (state["patch_embed.proj.weight"].shape[0],), state["feature.2.weight"].shape[0], side


def _shape(state, network):
    """(widths, embedding_dim, image side) of kerasbn network `network` whose weights
    `state` holds."""
    if network in iresnet.LAYERS:
        return _iresnet_shape(state)
    if network in vit.SIZES:
        return _vit_shape(state)
    return _mobilefacenet_shape(state)


def build(state, name):
    """(Keras model from RGB pixels to the embedding, its Manifest) of arcface_torch network
    `name` (a layouts.NETWORKS key) holding the weights of `state` ({key: array})."""
    if name not in NETWORKS:
        raise StateDictError(f"--network={name}: kerasbn imports arcface_torch's "
                             f"{', '.join(NETWORKS)}")
    network = NETWORKS[name]
    try:
        widths, embedding, side = _shape(state, network)
    except KeyError as e:
        raise StateDictError(f"the state dict has no {e.args[0]}: is it an arcface_torch "
                             f"{name} backbone?") from None
    settings = models.NetworkSettings(
        name=network, num_classes=2, image_size=(side, side), channels=3, widths=widths,
        dropout=0.0, norm="torch", embedding_dim=embedding)
    problem = models.problem(settings)
    if problem:
        raise StateDictError(f"the state dict's {name} cannot be built: {problem}")
    pixels = keras.Input((side, side, 3), name="image")
    x = caffe_layers.CaffeInput(False, (MEAN,), SCALE, name="caffe_input")(pixels)
    x = registry.NETWORKS[network].features(x, settings, models.Parts(settings))
    model = keras.Model(pixels, x, name=name)
    _load(model, state, layouts.modules(name), name)
    manifest = Manifest(image_size=(side, side), channels=3, encoding="raw", class_names=(),
                        splits={}, mean=(0.0,) * 3, std=(1.0,) * 3, resize_mode="stretch")
    return model, manifest


def _load(model, state, names, name):
    """Sets each layer of `model` named in `names` ({module: layer}) from `state`; a key of
    the state dict that no layer takes, or a layer whose key is missing, is named."""
    ours = {layer.name: layer for layer in model.layers}
    taken = set()
    for prefix, layer_name in names.items():
        if layer_name not in ours:
            continue
        layer = ours[layer_name]
        values = []
        for weight in layer.weights:
            key = layouts.key(prefix, weight, layer)
            if key not in state:
                raise StateDictError(f"the state dict has no {key}, which an arcface_torch "
                                     f"{name} has: is --network right?")
            value = layouts.to_keras(state[key], tuple(weight.shape),
                                     layouts.flattened(ours, layer_name))
            if tuple(weight.shape) != value.shape:
                raise StateDictError(f"{key}: shape {state[key].shape} where kerasbn's {name} "
                                     f"takes {tuple(weight.shape)}")
            values.append(np.asarray(value, np.float32))
        layer.set_weights(values)
        taken.update(k for k in state if k == prefix or k.startswith(prefix + "."))
    left = [k for k in state if k not in taken and not k.endswith("num_batches_tracked")]
    if left:
        raise StateDictError(f"the state dict has {left[0]}, which an arcface_torch {name} "
                             "does not: is --network right?")
