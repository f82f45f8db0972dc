"""A kerasbn backbone as an arcface_torch state dict: what `backbone.state_dict()` holds,
which arcface_torch's `get_model(name, num_features=...).load_state_dict` takes (strict);
`state_dict.write` writes it as torch.save would.

BN layers go over as torch.nn.BatchNorm's weight, bias and running statistics. A Keras-
semantics BN (--norm=keras, eps 1e-3) infers as PyTorch's (eps 1e-5) does once its running
variance carries the difference, var + 1e-3 - 1e-5, which is what is written; the Caffe
norms keep statistics PyTorch has no form for and are refused.
"""

import collections

import keras
import numpy as np

from kerasbn.nn import norms
from kerasbn.pytorch import layouts
from kerasbn.pytorch.state_dict import StateDictError

# The norms whose inference is PyTorch's BatchNorm's: a scale, a shift and running statistics.
NORMS = ("keras", "torch", "sync")


def _norm_state(layer, prefix, epsilon):
    if not isinstance(layer, (norms.KerasBatchNorm, keras.layers.BatchNormalization)):
        raise StateDictError(f"its layer {layer.name} is a {type(layer).__name__}, whose "
                             "statistics PyTorch's BatchNorm has no form for; train with "
                             f"--norm={' or --norm='.join(NORMS)}")
    gamma = getattr(layer, "gamma", None)
    beta = np.asarray(layer.beta, np.float32)
    variance = np.asarray(layer.moving_variance, np.float32) + layer.epsilon - epsilon
    return {f"{prefix}.weight": np.ones_like(beta) if gamma is None else
            np.asarray(gamma, np.float32),
            f"{prefix}.bias": beta,
            f"{prefix}.running_mean": np.asarray(layer.moving_mean, np.float32),
            f"{prefix}.running_var": np.maximum(variance, 0.0).astype(np.float32),
            f"{prefix}.num_batches_tracked": np.array(0, np.int64)}


def state_of(model, network):
    """{key: array} of arcface_torch network `network` (a layouts.NETWORKS key) holding the
    weights of the kerasbn `model` built as its kerasbn network."""
    layers = {layer.name: layer for layer in model.layers}
    state = collections.OrderedDict()
    for prefix, layer_name in layouts.modules(network).items():
        if layer_name not in layers:
            raise StateDictError(f"it has no layer {layer_name}, where arcface_torch's "
                                 f"{network} has {prefix}")
        layer = layers[layer_name]
        if isinstance(layer, (norms.CaffeNorm, keras.layers.BatchNormalization)):
            state.update(_norm_state(layer, prefix,
                                     layouts.torch_epsilon(network, layer_name)))
            continue
        flattened = layouts.flattened(layers, layer_name)
        for weight in layer.weights:
            state[layouts.key(prefix, weight, layer)] = layouts.to_torch(
                np.asarray(weight, np.float32), layouts.local_name(weight, layer), flattened)
    return state

