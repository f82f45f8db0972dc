"""GroupedConv2D against Keras's own grouped Conv2D: same weights, same outputs and
gradients, in both of its forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasbn.nn import grouped_conv


@pytest.mark.parametrize("cin, cout, groups, kernel, stride", [
    (16, 16, 16, 3, 2),   # depthwise
    (16, 16, 8, 3, 1),    # MobileFaceNet's two channels per group
    (12, 24, 3, 3, 2),    # four per group, two outputs per input: still depthwise
    (20, 8, 2, (5, 3), 1),  # ten per group: one convolution per group
])
def test_it_equals_keras_grouped_conv2d_forward_and_backward(cin, cout, groups, kernel, stride):
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 11, 13, cin)), tf.float32)
    reference = keras.layers.Conv2D(cout, kernel, stride, groups=groups)
    reference(x)
    layer = grouped_conv.conv2d(cout, kernel, stride, groups)
    layer(x)
    layer.set_weights(reference.get_weights())
    assert [w.shape for w in layer.weights] == [w.shape for w in reference.weights]

    def run(conv):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x)
            loss = tf.reduce_sum(y * tf.cos(y))
        return [y, *tape.gradient(loss, [x, *conv.trainable_variables])]

    for a, b in zip(run(layer), run(reference)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_it_serializes_and_one_group_is_plain_conv2d():
    layer = grouped_conv.conv2d(8, 3, groups=4, name="g")
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(again, grouped_conv.GroupedConv2D) and again.groups == 4
    assert type(grouped_conv.conv2d(8, 3)) is keras.layers.Conv2D
