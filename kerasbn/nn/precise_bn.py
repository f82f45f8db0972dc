"""Precise BN (Wu & Johnson, 2021): before a test, replace every BN layer's running statistics
by the average of its batch statistics over N training batches at the current weights.

Moving averages lag behind weights that change fast, which makes test curves jump between
tests; averaging fresh batch statistics removes that lag. Works for every `--norm` that keeps
running statistics; each implementation receives them in its own representation.
"""

import itertools

import keras
import tensorflow as tf

from kerasbn.nn import norms


def bn_layers(model):
    """The layers of `model` that keep running statistics, in order."""
    kinds = (keras.layers.BatchNormalization, norms.CaffeNorm)
    return [layer for layer in model.layers if isinstance(layer, kinds)]


def _assign(layer, mean, variance):
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
    else:
        layer.assign_statistics(mean, variance)


def recompute(model, batch_iterator, batches):
    """Sets the running statistics of every BN layer of `model` from the next `batches`
    (images, labels) batches of `batch_iterator` (forward passes in training mode: each layer
    sees its inputs as training does). Returns the number of layers updated."""
    layers = bn_layers(model)
    if not layers or batches < 1:
        return 0
    # One input given as a tensor, not a list, so calling the probe with a batch matches it.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [layer.input for layer in layers])
    saved = [[v.numpy() for v in layer.non_trainable_variables] for layer in layers]
    sums = None
    for images, _ in itertools.islice(batch_iterator, batches):
        # A one-output probe returns a tensor, not a list.
        outputs = tf.nest.flatten(probe(images, training=True))
        moments = [tf.nn.moments(tf.cast(x, tf.float32), list(range(len(x.shape) - 1)))
                   for x in outputs]
        sums = moments if sums is None else [(a + m, b + v) for (a, b), (m, v)
                                             in zip(sums, moments)]
    for layer, state in zip(layers, saved):
        # The probe's training-mode pass moved the running statistics: start from the saved.
        for variable, value in zip(layer.non_trainable_variables, state):
            variable.assign(value)
    for layer, (mean_sum, variance_sum) in zip(layers, sums):
        _assign(layer, mean_sum / batches, variance_sum / batches)
    return len(layers)
