"""Keras layers for the Caffe operations Keras has no exact twin for, channels last: Caffe's
pooling (output size rounded up or down, average over the window clipped to the padded
input), LRN, SSD's and happynear's Normalize, SSD's Permute, Flip, Axpy, Scale, Power,
Eltwise, Slice, Reshape in Caffe's C,H,W order, and Caffe's preprocessing of an image
(channel order, mean, scale). Each serializes with get_config."""

import keras
import numpy as np
import tensorflow as tf


def pooled_size(size, kernel, stride, pad, padded=None, round_mode="CEIL"):
    """Caffe's pooling output length along one axis (pooling_layer.cpp): the windows'
    count rounded up (or down, with `round_mode` FLOOR), less one where the last window
    would start in the padding. Caffe makes that clip on both axes when either is padded
    (`padded`, default this axis's `pad`), so an unpadded axis can lose a window too."""
    windows = (size + 2 * pad - kernel) / stride
    out = int(np.ceil(windows) if round_mode == "CEIL" else np.floor(windows)) + 1
    if (pad if padded is None else padded) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _average_divisors(size, kernel, stride, pad, out):
    """Per output position, the window's length clipped to the padded input (Caffe's AVE)."""
    starts = np.arange(out) * stride - pad
    return np.minimum(starts + kernel, size + pad) - starts


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class CaffePooling(keras.layers.Layer):
    """Caffe's MAX or AVE pooling of NHWC input: `kernel`, `stride`, `pad` as (h, w);
    `global_pooling` over the whole map; the output's size rounded as `round_mode` says
    (CEIL, Caffe's default, or FLOOR)."""

    def __init__(self, method, kernel=(1, 1), stride=(1, 1), pad=(0, 0), global_pooling=False,
                 round_mode="CEIL", **kwargs):
        super().__init__(**kwargs)
        self.method, self.global_pooling, self.round_mode = method, global_pooling, round_mode
        self.kernel, self.stride, self.pad = tuple(kernel), tuple(stride), tuple(pad)

    def _geometry(self, height, width):
        if self.global_pooling:
            return (height, width), (1, 1), (0, 0), (1, 1)
        out = tuple(pooled_size(s, k, st, p, any(self.pad), self.round_mode) for s, k, st, p in
                    zip((height, width), self.kernel, self.stride, self.pad))
        return self.kernel, self.stride, self.pad, out

    def call(self, x):
        height, width = x.shape[1], x.shape[2]
        (kh, kw), (sh, sw), (ph, pw), (oh, ow) = self._geometry(height, width)
        after = ((oh - 1) * sh + kh - height - ph, (ow - 1) * sw + kw - width - pw)
        paddings = [[0, 0], [ph, max(after[0], 0)], [pw, max(after[1], 0)], [0, 0]]
        if self.method == "MAX":
            padded = tf.pad(x, paddings, constant_values=float("-inf"))
            y = tf.nn.max_pool2d(padded, (kh, kw), (sh, sw), "VALID")
        else:
            y = tf.nn.avg_pool2d(tf.pad(x, paddings), (kh, kw), (sh, sw), "VALID") * (kh * kw)
            divisor = np.outer(_average_divisors(height, kh, sh, ph, oh),
                               _average_divisors(width, kw, sw, pw, ow))
            y = y / tf.constant(divisor[None, :, :, None], y.dtype)
        return y[:, :oh, :ow]

    def compute_output_shape(self, input_shape):
        *_, out = self._geometry(input_shape[1], input_shape[2])
        return (input_shape[0], *out, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "method": self.method, "kernel": self.kernel,
                "stride": self.stride, "pad": self.pad, "global_pooling": self.global_pooling,
                "round_mode": self.round_mode}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class LRN(keras.layers.Layer):
    """Caffe's local response normalisation: ACROSS_CHANNELS x / (k + alpha/n sum x^2)^beta
    over n neighbouring channels; WITHIN_CHANNEL x / (1 + alpha avg x^2)^beta over an n x n
    window averaged as Caffe's AVE pooling (lrn_layer.cpp)."""

    def __init__(self, size, alpha, beta, k, within_channel=False, **kwargs):
        super().__init__(**kwargs)
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self.within_channel = within_channel
        pad = (self.size - 1) // 2
        self._average = CaffePooling("AVE", (self.size,) * 2, (1, 1), (pad, pad))

    def build(self, input_shape):
        self._average.build(input_shape)

    def call(self, x):
        if not self.within_channel:
            return tf.nn.local_response_normalization(
                x, depth_radius=(self.size - 1) // 2, bias=self.k, alpha=self.alpha / self.size,
                beta=self.beta)
        return x * tf.pow(1.0 + self.alpha * self._average(tf.square(x)), -self.beta)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "alpha": self.alpha,
                "beta": self.beta, "k": self.k, "within_channel": self.within_channel}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class Normalize(keras.layers.Layer):
    """SSD's Normalize: x / sqrt(sum x^2 + eps) over each sample (`across_spatial`) or each
    pixel's channels, times a learned scale (one, or one per channel)."""

    def __init__(self, across_spatial=True, channel_shared=True, epsilon=1e-10, **kwargs):
        super().__init__(**kwargs)
        self.across_spatial, self.channel_shared = across_spatial, channel_shared
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        shape = (1,) if self.channel_shared else (input_shape[-1],)
        self.scale = self.add_weight(name="scale", shape=shape, initializer="ones")

    def call(self, x):
        axes = list(range(1, len(x.shape))) if self.across_spatial else [-1]
        return x * tf.math.rsqrt(tf.reduce_sum(tf.square(x), axes, keepdims=True)
                                 + self.epsilon) * self.scale

    def get_config(self):
        return {**super().get_config(), "across_spatial": self.across_spatial,
                "channel_shared": self.channel_shared, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class VectorNormalize(keras.layers.Layer):
    """happynear's Normalize (the AM-Softmax and NormFace forks): each sample divided by
    its L2 (or L1) norm over all its values, no learned scale."""

    def __init__(self, norm="L2", **kwargs):
        super().__init__(**kwargs)
        self.norm = norm

    def call(self, x):
        axes = list(range(1, len(x.shape)))
        if self.norm == "L1":
            return x / tf.reduce_sum(tf.abs(x), axes, keepdims=True)
        return x * tf.math.rsqrt(tf.reduce_sum(tf.square(x), axes, keepdims=True))

    def get_config(self):
        return {**super().get_config(), "norm": self.norm}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class Flip(keras.layers.Layer):
    """happynear's Flip: the image mirrored left to right (`width`) and/or upside down
    (`height`), as mirror-fusion face networks embed a face and its mirror together."""

    def __init__(self, width=True, height=False, **kwargs):
        super().__init__(**kwargs)
        self.width, self.height = bool(width), bool(height)

    def call(self, x):
        axes = [axis for axis, on in ((1, self.height), (2, self.width)) if on]
        return tf.reverse(x, axes) if axes else x

    def get_config(self):
        return {**super().get_config(), "width": self.width, "height": self.height}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class Axpy(keras.layers.Layer):
    """The Axpy layer of SE networks converted to Caffe: a * x + y, `a` one value per
    sample and channel (the squeeze-excitation weights), `x` the features, `y` the shortcut."""

    def call(self, inputs):
        a, x, y = inputs
        return a * x + y


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class CaffeOutput(keras.layers.Layer):
    """An output of an imported network of several (its `blob`'s value, by the Caffe name),
    kept beside the face output: the export's serving_raw returns each."""

    def __init__(self, blob, **kwargs):
        super().__init__(**kwargs)
        self.blob = blob

    def call(self, x):
        return x

    @property
    def key(self):
        """The name serving_raw gives this output: the layer's, less its ">output" helper
        suffix."""
        return self.name.rsplit(">", 1)[0]

    def get_config(self):
        return {**super().get_config(), "blob": self.blob}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class Scale(keras.layers.Layer):
    """Caffe's Scale along the channels: x * gamma (+ beta with `bias_term`)."""

    def __init__(self, bias_term=False, **kwargs):
        super().__init__(**kwargs)
        self.bias_term = bias_term

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],),
                                     initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(input_shape[-1],),
                                    initializer="zeros") if self.bias_term else None

    def call(self, x):
        return x * self.gamma + self.beta if self.bias_term else x * self.gamma

    def get_config(self):
        return {**super().get_config(), "bias_term": self.bias_term}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class Power(keras.layers.Layer):
    """Caffe's Power: (shift + scale x)^power."""

    def __init__(self, power=1.0, scale=1.0, shift=0.0, **kwargs):
        super().__init__(**kwargs)
        self.power, self.scale, self.shift = float(power), float(scale), float(shift)

    def call(self, x):
        y = self.shift + self.scale * x
        return y if self.power == 1.0 else tf.pow(y, self.power)

    def get_config(self):
        return {**super().get_config(), "power": self.power, "scale": self.scale,
                "shift": self.shift}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class Eltwise(keras.layers.Layer):
    """Caffe's Eltwise over its inputs: SUM (with a coefficient per input), PROD or MAX."""

    def __init__(self, operation="SUM", coefficients=None, **kwargs):
        super().__init__(**kwargs)
        self.operation = operation
        self.coefficients = list(coefficients) if coefficients else None

    def call(self, inputs):
        if self.operation == "PROD":
            return tf.math.reduce_prod(tf.stack(inputs), 0)
        if self.operation == "MAX":
            return tf.math.reduce_max(tf.stack(inputs), 0)
        coefficients = self.coefficients or [1.0] * len(inputs)
        return tf.add_n([c * x for c, x in zip(coefficients, inputs)])

    def get_config(self):
        return {**super().get_config(), "operation": self.operation,
                "coefficients": self.coefficients}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class SliceAxis(keras.layers.Layer):
    """One part, [start, stop), of its input along `axis` (Caffe's Slice gives several).
    With `parts`, start and stop count equal parts of the axis's length when called: a
    Slice of the batch (mirror fusion's) whose size is known only then."""

    def __init__(self, axis, start, stop, parts=0, **kwargs):
        super().__init__(**kwargs)
        self.axis, self.start, self.stop, self.parts = int(axis), int(start), int(stop), parts

    def call(self, x):
        start, stop = self.start, self.stop
        if self.parts:
            part = tf.shape(x)[self.axis] // self.parts
            start, stop = start * part, stop * part
        index = [slice(None)] * len(x.shape)
        index[self.axis] = slice(start, stop)
        return x[tuple(index)]

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "start": self.start,
                "stop": self.stop, "parts": self.parts}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class CaffeReshape(keras.layers.Layer):
    """Reshape in Caffe's order: 4-D input read as N,C,H,W, the result (per sample `shape`)
    laid out channels last again when 4-D."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        self.shape = [int(d) for d in shape]

    def call(self, x):
        if len(x.shape) == 4:
            x = tf.transpose(x, [0, 3, 1, 2])
        y = tf.reshape(x, [-1, *self.shape])
        return tf.transpose(y, [0, 2, 3, 1]) if len(y.shape) == 4 else y

    def get_config(self):
        return {**super().get_config(), "shape": self.shape}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class CaffePermute(keras.layers.Layer):
    """SSD's Permute of a 4-D blob: its N,C,H,W axes put in `order`, the result laid out
    channels last again (its second axis is the new channels)."""

    def __init__(self, order, **kwargs):
        super().__init__(**kwargs)
        self.order = [int(axis) for axis in order]

    def call(self, x):
        permuted = tf.transpose(tf.transpose(x, [0, 3, 1, 2]), self.order)
        return tf.transpose(permuted, [0, 2, 3, 1])

    def get_config(self):
        return {**super().get_config(), "order": self.order}


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class ChannelsFirstFlatten(keras.layers.Layer):
    """Flattens NHWC input in Caffe's C,H,W order, as Caffe's Flatten and InnerProduct see
    a convolution's output."""

    def call(self, x):
        if len(x.shape) == 4:
            x = tf.transpose(x, [0, 3, 1, 2])
        return tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])


@keras.saving.register_keras_serializable(package="kerasbn_caffe")
class CaffeInput(keras.layers.Layer):
    """Caffe's preprocessing of RGB pixels (0-255): to BGR with `bgr` (a network trained on
    OpenCV's images), the mean subtracted (one, or one per channel in the network's order),
    times `scale`."""

    def __init__(self, bgr=True, mean=(0.0,), scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.bgr, self.mean, self.scale = bgr, [float(m) for m in mean], float(scale)

    def call(self, x):
        if self.bgr and x.shape[-1] == 3:
            x = x[..., ::-1]
        return (x - tf.constant(self.mean, x.dtype)) * self.scale

    def get_config(self):
        return {**super().get_config(), "bgr": self.bgr, "mean": self.mean,
                "scale": self.scale}
