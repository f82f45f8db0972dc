"""A grouped 2-D convolution that runs fast on CPUs: Keras's Conv2D with the same kernel
layout and weights, computed another way.

TensorFlow's CPU kernel for a grouped Conv2D is slow (measured on a 2-core Xeon: a 3x3
convolution of 128 channels in 64 groups, forward and gradients, 14 s against 0.07 s
ungrouped; two groups of 48 channels 6x an ungrouped step). This layer computes it as a
depthwise convolution when each group has few input channels (MobileFaceNet's depthwise
and two-channel groups; DepthwiseConv2dNative is fast) and as one convolution per group
otherwise (Caffe's group: 2 networks), so MobileFaceNet and grouped Caffe networks train at
the speed of their arithmetic. The kernel is Conv2D's grouped [kh, kw, in / groups, out]:
checkpoints, initializers' fans and weight decay are Conv2D's.
"""

import keras
from keras import ops

# Input channels per group up to which the depthwise form is used: it computes the same
# multiply-adds but holds an in / groups times wider intermediate map before summing.
DEPTHWISE_UP_TO = 4


@keras.saving.register_keras_serializable(package="kerasbn")
class GroupedConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D with `groups` > 1, channels last, computed as the module says."""

    def convolution_op(self, inputs, kernel):
        kh, kw, per_group, filters = kernel.shape
        groups = self.groups
        if per_group > DEPTHWISE_UP_TO:
            parts = ops.split(inputs, groups, axis=-1)
            kernels = ops.split(kernel, groups, axis=-1)
            return ops.concatenate([super(GroupedConv2D, self).convolution_op(x, k)
                                    for x, k in zip(parts, kernels)], axis=-1)
        multiplier = filters // groups
        # Depthwise channel c (group c // per_group, input c % per_group) times multiplier m
        # is the grouped kernel's input c % per_group for output (c // per_group) * mult + m.
        depthwise = ops.reshape(
            ops.transpose(ops.reshape(kernel, (kh, kw, per_group, groups, multiplier)),
                          (0, 1, 3, 2, 4)), (kh, kw, groups * per_group, multiplier))
        y = ops.depthwise_conv(inputs, depthwise, strides=self.strides, padding=self.padding,
                               dilation_rate=self.dilation_rate, data_format="channels_last")
        if per_group == 1:
            return y
        height, width = y.shape[1], y.shape[2]
        y = ops.reshape(y, (-1, height, width, groups, per_group, multiplier))
        return ops.reshape(ops.sum(y, axis=4), (-1, height, width, filters))


def conv2d(filters, kernel_size, strides=1, groups=1, **kwargs):
    """Conv2D, or GroupedConv2D where `groups` > 1."""
    layer = GroupedConv2D if groups > 1 else keras.layers.Conv2D
    return layer(filters, kernel_size, strides, groups=groups, **kwargs)
