"""Batch Normalization implementations behind one factory, `make_norm(name, ...)`.

The three Caffe semantics the study compared (docs/reference.md section 3) are reproduced
exactly, plus Keras's BatchNormalization (on TensorFlow's fused kernel), PyTorch's
BatchNorm2d/1d (arcface_torch's networks), batch renormalisation and synchronised
statistics (Keras's own layers), and none.
Statistics are computed and kept in float32 under mixed precision.

Conventions of the options: `momentum` is the weight of the old running statistic (Keras's
momentum; Caffe's moving_average_fraction; PyTorch's momentum is 1 - it; caffe-windows's
decay); `epsilon` is added to the variance. `None` takes each implementation's own default.
"""

import keras
import tensorflow as tf

# The least epsilon cuDNN's batch norm takes (CUDNN_BN_MIN_EPSILON).
_CUDNN_EPSILON = 1e-5
NORMS = ("keras", "bvlc", "windows", "nvidia", "nvidia_caffe", "torch", "renorm", "sync",
         "none")
# Each implementation's own (momentum, epsilon), as its source sets them.
DEFAULTS = {"keras": (0.99, 1e-3), "renorm": (0.99, 1e-3), "sync": (0.99, 1e-3),
            "bvlc": (0.999, 1e-5), "windows": (0.95, 1e-10), "nvidia": (0.999, 1e-5),
            "nvidia_caffe": (0.999, 1e-5), "torch": (0.9, 1e-5), "none": (None, None)}


class CaffeNorm(keras.layers.Layer):
    """Per-channel (last axis) normalisation with a learned scale and shift (start 1 and 0;
    with `fixed_scale` the scale stays 1, as insightface fixes its IResNet's last BN's
    weight); subclasses define the running statistics and how they are used."""

    def __init__(self, momentum, epsilon, regularizer=None, fixed_scale=False, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.regularizer = keras.regularizers.get(regularizer)
        self.fixed_scale = bool(fixed_scale)

    def _weight(self, name, shape, value, trainable=False, dtype="float32", regularizer=None):
        # autocast=False: statistics and scale stay float32 under mixed precision.
        return self.add_weight(name=name, shape=shape, dtype=dtype, trainable=trainable,
                               initializer=keras.initializers.Constant(value), autocast=False,
                               regularizer=regularizer)

    def build(self, input_shape):
        channels = (input_shape[-1],)
        # A variable made untrainable stays so when its layer is unfrozen (Keras sets only
        # the trainable ones' flag), so a fixed scale survives --freeze_backbone_iter.
        self.gamma = self._weight("gamma", channels, 1.0, not self.fixed_scale,
                                  regularizer=None if self.fixed_scale else self.regularizer)
        self.beta = self._weight("beta", channels, 0.0, True, regularizer=self.regularizer)
        self.build_statistics(channels)

    def moments(self, x):
        """Per-channel batch mean, biased variance and the count m = N*H*W, in float32."""
        axes = list(range(len(x.shape) - 1))
        mean, variance = tf.nn.moments(x, axes)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        return mean, variance, count

    def normalize(self, x, mean, variance, epsilon):
        return self.gamma * (x - mean) * tf.math.rsqrt(variance + epsilon) + self.beta

    def call(self, inputs, training=False):
        # Frozen (a fine-tuned backbone's first iterations), it infers, as Keras's BN does.
        training = training and self.trainable
        x = tf.cast(inputs, tf.float32)
        y = self.train_step(x) if training else self.infer(x)
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def assign_statistics(self, mean, variance):
        """Sets the running statistics to a per-channel mean and (biased) variance."""
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon,
                "regularizer": keras.regularizers.serialize(self.regularizer)
                if self.regularizer else None, "fixed_scale": self.fixed_scale}


def fused(inputs, layer, epsilon, training, average=1.0):
    """TensorFlow's fused batch norm (FusedBatchNormV3) of `inputs` over the last axis with
    `layer`'s scale, shift and running statistics: (y in the input's dtype, mean, variance),
    float32. Training with `average` 1 returns the batch mean and the batch variance with
    Bessel's correction; below 1, the running statistics moved by that factor. The kernel
    takes 4-D NHWC input in float32, float16 or bfloat16; other ranks are viewed as
    [N, 1, 1, C]."""
    x = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, [-1, 1, 1, inputs.shape[-1]])
    keep = not training or average != 1.0
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, layer.gamma, layer.beta, mean=layer.moving_mean if keep else None,
        variance=layer.moving_variance if keep else None, epsilon=epsilon,
        data_format="NHWC", is_training=training, exponential_avg_factor=average)
    return tf.reshape(y, tf.shape(inputs)), mean, variance


@keras.saving.register_keras_serializable(package="kerasbn")
class KerasBatchNorm(CaffeNorm):
    """Keras's BatchNormalization (keras/src/layers/normalization/batch_normalization.py,
    axis -1, no renorm) on TensorFlow's fused kernel: one op forward and one backward where
    Keras runs casts, moments and a separate normalisation, so BN costs little over the
    convolution before it. Under mixed precision the kernel takes the float16/bfloat16 input
    itself and keeps its statistics in float32, as Keras's layer does after casting.

    ```
    keras     b=0.99 (momentum), eps=1e-3
      train:  mmean = b*mmean + (1-b)*mu;  mvar = b*mvar + (1-b)*v     (start 0 and 1)
              y = gamma*(x - mu)/sqrt(v + eps) + beta
      infer:  y = gamma*(x - mmean)/sqrt(mvar + eps) + beta
    ```
    The kernel returns the batch variance with Bessel's correction, v*m/(m-1); the running
    variance takes v, as Keras's does. Not trainable (a frozen backbone), the layer infers
    in training too, as Keras's does. An epsilon under cuDNN's least, 1e-5, normalises
    unfused, so the formula holds on every device.
    """

    def build_statistics(self, channels):
        self.moving_mean = self._weight("moving_mean", channels, 0.0)
        self.moving_variance = self._weight("moving_variance", channels, 1.0)

    def call(self, inputs, training=False):
        training = training and self.trainable
        if self.epsilon < _CUDNN_EPSILON:
            return super().call(inputs, training)
        y, mean, variance = fused(inputs, self, self.epsilon, training)
        if training:
            m = tf.cast(tf.size(inputs), tf.float32) / inputs.shape[-1]
            self._update(mean, variance * (m - 1.0) / tf.maximum(m, 2.0))
        return y

    def _update(self, mean, variance):
        b = self.momentum
        self.moving_mean.assign(b * self.moving_mean + (1 - b) * tf.stop_gradient(mean))
        self.moving_variance.assign(b * self.moving_variance
                                    + (1 - b) * tf.stop_gradient(variance))

    def train_step(self, x):
        mean, variance, _ = self.moments(x)
        self._update(mean, variance)
        return self.normalize(x, mean, variance, self.epsilon)

    def infer(self, x):
        return self.normalize(x, self.moving_mean, self.moving_variance, self.epsilon)


@keras.saving.register_keras_serializable(package="kerasbn")
class BVLCBatchNorm(CaffeNorm):
    """BVLC Caffe BatchNorm + Scale (BVLC/caffe src/caffe/layers/batch_norm_layer.cpp).

    ```
    bvlc      b=0.999 (momentum), eps=1e-5
      train:  s = b*s + 1;  Smean = mu + b*Smean;  Svar = (m/(m-1) if m>1 else 1)*v + b*Svar
              (all start at 0)
              y = gamma*(x - mu)/sqrt(v + eps) + beta
      infer:  k = 0 if s == 0 else 1/s;   y = gamma*(x - k*Smean)/sqrt(k*Svar + eps) + beta
    ```
    """

    def build_statistics(self, channels):
        self.scale_factor = self._weight("scale_factor", (), 0.0)
        self.mean_sum = self._weight("mean_sum", channels, 0.0)
        self.variance_sum = self._weight("variance_sum", channels, 0.0)

    def train_step(self, x):
        mean, variance, m = self.moments(x)
        b = self.momentum
        bessel = tf.where(m > 1, m / tf.maximum(m - 1, 1.0), 1.0)
        self.scale_factor.assign(b * self.scale_factor + 1.0)
        self.mean_sum.assign(mean + b * self.mean_sum)
        self.variance_sum.assign(bessel * variance + b * self.variance_sum)
        return self.normalize(x, mean, variance, self.epsilon)

    def infer(self, x):
        k = tf.where(self.scale_factor == 0, 0.0, 1.0 / tf.maximum(self.scale_factor, 1e-30))
        return self.normalize(x, k * self.mean_sum, k * self.variance_sum, self.epsilon)

    def assign_statistics(self, mean, variance):
        self.scale_factor.assign(1.0)
        self.mean_sum.assign(mean)
        self.variance_sum.assign(variance)


@keras.saving.register_keras_serializable(package="kerasbn")
class WindowsBatchNorm(CaffeNorm):
    """caffe-windows BN (happynear/caffe-windows, src/caffe/layers/bn_layer.cpp at 6e82e123).

    ```
    windows   decay d=0.95 (momentum), var_eps=1e-10 (epsilon)
      train:  hmean = (1-d)*mu + d*hmean;  hvar = (1-d)*v + d*hvar   (hmean starts 0, hvar 1)
              y = gamma*(x - mu)/sqrt(v + var_eps) + beta
      infer:  y = gamma*(x - hmean)/sqrt(hvar) + beta                 (no epsilon at inference)
    ```
    """

    def build_statistics(self, channels):
        self.moving_mean = self._weight("moving_mean", channels, 0.0)
        self.moving_variance = self._weight("moving_variance", channels, 1.0)

    def train_step(self, x):
        mean, variance, _ = self.moments(x)
        d = self.momentum
        self.moving_mean.assign((1 - d) * mean + d * self.moving_mean)
        self.moving_variance.assign((1 - d) * variance + d * self.moving_variance)
        return self.normalize(x, mean, variance, self.epsilon)

    def infer(self, x):
        return self.normalize(x, self.moving_mean, self.moving_variance, 0.0)


@keras.saving.register_keras_serializable(package="kerasbn")
class NvidiaBatchNorm(CaffeNorm):
    """NVIDIA Caffe 0.15 BatchNorm, cuDNN engine (NVIDIA/caffe v0.15.14,
    src/caffe/layers/cudnn_batch_norm_layer.cu), on TensorFlow's fused kernel, which computes
    exactly this on CPU and GPU (FusedBatchNormV3 with exponential_avg_factor).

    ```
    nvidia    b=0.999 (momentum), eps=max(eps, 1e-5)
      train:  cudnnBatchNormalizationForwardTraining with factor f = 1-b:
              gmean = (1-f)*gmean + f*mu;  gvar = (1-f)*gvar + f*v*m/(m-1)   (both start at 0)
              y = gamma*(x - mu)/sqrt(v + eps) + beta
      infer:  y = gamma*(x - gmean)/sqrt(gvar + eps) + beta
    ```
    """

    def build_statistics(self, channels):
        self.moving_mean = self._weight("moving_mean", channels, 0.0)
        self.moving_variance = self._weight("moving_variance", channels, 0.0)

    def call(self, inputs, training=False):
        training = training and self.trainable
        y, mean, variance = fused(inputs, self, max(self.epsilon, _CUDNN_EPSILON), training,
                                  1.0 - self.momentum)
        if training:
            self.moving_mean.assign(mean)
            self.moving_variance.assign(variance)
        return y


@keras.saving.register_keras_serializable(package="kerasbn")
class NvidiaCaffeBatchNorm(CaffeNorm):
    """NVIDIA Caffe 0.15 BatchNorm, CAFFE (CPU) engine (src/caffe/layers/batch_norm_layer.cpp).

    ```
    nvidia_caffe  b=0.999 (momentum), eps=1e-5
      train:  it = min(it + 1, 201)        (counts training steps, stops at 201)
              if it > 200:  v = min(v, 4*(gvar + mean_c(|gvar|)));  v = max(v, gvar/4)
                            (clipped v is used below)
              if it > 1:  gmean = (1-b)*mu + b*gmean;  gvar = (1-b)*v + b*gvar
              else: gmean = mu; gvar = v
              y = gamma*(x - mu)/sqrt(v + eps) + beta
      infer:  y = gamma*(x - gmean)/sqrt(gvar + eps) + beta
    ```
    """

    def build_statistics(self, channels):
        self.step = self._weight("step", (), 0.0)
        self.moving_mean = self._weight("moving_mean", channels, 0.0)
        self.moving_variance = self._weight("moving_variance", channels, 0.0)

    def train_step(self, x):
        mean, variance, _ = self.moments(x)
        b = self.momentum
        step = tf.minimum(self.step + 1.0, 201.0)
        self.step.assign(step)
        gvar = self.moving_variance
        clipped = tf.maximum(tf.minimum(
            variance, 4.0 * (gvar + tf.reduce_mean(tf.abs(gvar)))), gvar / 4.0)
        variance = tf.where(step > 200, clipped, variance)
        first = step <= 1
        self.moving_mean.assign(tf.where(first, mean, (1 - b) * mean + b * self.moving_mean))
        self.moving_variance.assign(tf.where(first, variance, (1 - b) * variance + b * gvar))
        return self.normalize(x, mean, variance, self.epsilon)

    def infer(self, x):
        return self.normalize(x, self.moving_mean, self.moving_variance, self.epsilon)


@keras.saving.register_keras_serializable(package="kerasbn")
class TorchBatchNorm(KerasBatchNorm):
    """PyTorch's torch.nn.BatchNorm2d/1d (torch/nn/modules/batchnorm.py and F.batch_norm),
    affine, tracking running statistics, as insightface's arcface_torch networks use it:
    the running variance takes the unbiased batch variance, normalisation the biased one.

    ```
    torch     b=0.9 (momentum; PyTorch's momentum 0.1 is 1-b), eps=1e-5
      train:  rmean = b*rmean + (1-b)*mu;  rvar = b*rvar + (1-b)*v*m/(m-1)   (start 0 and 1)
              y = gamma*(x - mu)/sqrt(v + eps) + beta
      infer:  y = gamma*(x - rmean)/sqrt(rvar + eps) + beta
    ```
    TensorFlow's fused kernel computes exactly this (its exponential_avg_factor is 1-b);
    an epsilon under cuDNN's least, 1e-5, normalises unfused. Its statistics start and infer
    as Keras's do; only their update differs.
    """

    def call(self, inputs, training=False):
        training = training and self.trainable
        if self.epsilon < _CUDNN_EPSILON:
            return super().call(inputs, training)
        y, mean, variance = fused(inputs, self, self.epsilon, training, 1.0 - self.momentum)
        if training:
            self.moving_mean.assign(mean)
            self.moving_variance.assign(variance)
        return y

    def train_step(self, x):
        mean, variance, count = self.moments(x)
        b = self.momentum
        unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
        self.moving_mean.assign(b * self.moving_mean + (1 - b) * tf.stop_gradient(mean))
        self.moving_variance.assign(b * self.moving_variance
                                    + (1 - b) * tf.stop_gradient(unbiased))
        return self.normalize(x, mean, variance, self.epsilon)


_OWN = {"keras": KerasBatchNorm, "bvlc": BVLCBatchNorm, "windows": WindowsBatchNorm,
        "nvidia": NvidiaBatchNorm, "nvidia_caffe": NvidiaCaffeBatchNorm, "torch": TorchBatchNorm}

# Running statistics that start at zero and are read without correction, so a run shorter
# than the averaging window tests with statistics still near their start. bvlc divides by
# its own scale factor and nvidia_caffe copies the first batch: neither needs scaling.
ZERO_START = ("keras", "renorm", "sync", "windows", "nvidia", "torch")


def scaled_momentum(name, max_iter, study_iters=420_000):
    """`name`'s own momentum with its averaging window w = 1/(1 - momentum) scaled to a run
    of `max_iter` as docs/reference.md scales the schedule: 1 - 1/max(10, round(w * max_iter /
    420000)), for ZERO_START implementations of runs shorter than the study's, and only ever
    shortened; otherwise its own momentum."""
    own = DEFAULTS[name][0]
    if name not in ZERO_START or max_iter >= study_iters:
        return own
    window = 1 / (1 - own)
    scaled = max(10, round(window * max_iter / study_iters))
    return 1 - 1 / scaled if scaled < window else own


def make_norm(name, momentum=None, epsilon=None, name_prefix=None, regularizer=None,
              fixed_scale=False):
    """A new normalisation layer of implementation `name` over the last axis; `regularizer`
    applies to its scale and shift (Caffe's decay_mult on them); `fixed_scale` keeps the
    scale at 1, untrained."""
    if name not in NORMS:
        raise ValueError(f"unknown --norm {name!r}; choose one of {', '.join(NORMS)}")
    default_momentum, default_epsilon = DEFAULTS[name]
    momentum = default_momentum if momentum is None else momentum
    epsilon = default_epsilon if epsilon is None else epsilon
    if name in _OWN:
        return _OWN[name](momentum, epsilon, regularizer, fixed_scale, name=name_prefix)
    if name == "none":
        return keras.layers.Identity(name=name_prefix)
    # Keras keeps its moving statistics in float32 under mixed precision on its own.
    if name == "renorm":
        # Unclipped, renorm normalises by the (initially meaningless) moving statistics from
        # the first step and does not train; rmax 3 and dmax 5 are the paper's final bounds.
        return keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, renorm=True, renorm_momentum=momentum,
            renorm_clipping={"rmax": 3.0, "rmin": 1 / 3.0, "dmax": 5.0}, name=name_prefix,
            gamma_regularizer=regularizer, beta_regularizer=regularizer,
            scale=not fixed_scale)
    return keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon,
                                           synchronized=True, name=name_prefix,
                                           gamma_regularizer=regularizer,
                                           beta_regularizer=regularizer, scale=not fixed_scale)
