"""The study's head: a Dense classifier with a bias, trained by softmax cross entropy."""

import keras

from kerasbn.nn import registry


def _classifier(units, settings, kernel, bias_regularizer):
    return keras.layers.Dense(units, bias_regularizer=bias_regularizer, **kernel)


def _loss(settings):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


registry.register_head("softmax", classifier=_classifier, loss=_loss, title="softmax")
