"""Face-recognition heads: CosFace and ArcFace margins, and the cosine classifier Partial FC samples.

The study trains a plain softmax (`models.build`'s Dense `logits`, head `softmax`). The margin
heads replace it by `CosineClassifier`: one centre per identity, and as logits s * cos(theta)
between the L2-normalised feature and each L2-normalised centre, in float32 under mixed
precision. Those unmargined cosine logits are what the network outputs, so evaluation,
prediction and the SavedModel use them unchanged. The margin belongs to training alone and
lives in the loss (`MarginLoss`), as in insightface's CombinedMarginLoss: the true class's
logit becomes s * (cos(theta) - m) for CosFace and s * cos(theta + m) for ArcFace, before
softmax cross entropy.

Partial FC (`--sample_classes F`, `kerasbn.nn.partial_fc`) trains on the logits of
`CosineClassifier.sampled`: ceil(F * K) centres only, every class of the batch plus randomly
drawn others.
"""

import math

import keras
import tensorflow as tf

HEADS = ("softmax", "cosface", "arcface")
EMBEDDINGS = ("pool", "bn_fc")
# (scale, margin) of each margin head when --scale / --margin are not given: chosen by the
# sweep in BENCHMARKS.md ("Margin heads").
DEFAULTS = {"cosface": (30.0, 0.35), "arcface": (30.0, 0.3)}
# The classifier is the network's last layer, named as models.CLASSIFIER.
CLASSIFIER = "logits"


def resolved(head, scale=None, margin=None):
    """(scale, margin) of `head`: the values given, else the head's defaults."""
    default_scale, default_margin = DEFAULTS[head]
    return (default_scale if scale is None else float(scale),
            default_margin if margin is None else float(margin))


def sample_count(num_classes, fraction):
    """How many centres a step of Partial FC with fraction `fraction` takes logits over."""
    return min(num_classes, math.ceil(fraction * num_classes))


@keras.saving.register_keras_serializable(package="kerasbn")
class CosineClassifier(keras.layers.Layer):
    """`scale` * cos(angle) between each L2-normalised feature and each of `units`
    L2-normalised class centres (no bias). The centres are a [units, features] `kernel`, one
    row per class, so a sampled step's gradient is a set of rows (`tf.IndexedSlices`)."""

    class_axis = 0

    def __init__(self, units, scale, kernel_initializer="glorot_uniform",
                 kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.scale = float(scale)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(self.units, input_shape[-1]),
                                      initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)

    def _cosines(self, features, centres):
        features = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1, epsilon=1e-12)
        centres = tf.math.l2_normalize(tf.cast(centres, tf.float32), axis=-1, epsilon=1e-12)
        return self.scale * tf.matmul(features, centres, transpose_b=True)

    def call(self, inputs):
        return self._cosines(inputs, self.kernel)

    def sampled(self, features, labels, count, seed, batch_labels=None):
        """(logits over `count` centres, each label's position among them): every class in
        `batch_labels` (default `labels`), filled up with others drawn uniformly by the
        stateless `seed` (as Partial FC: the batch's classes score 2, the rest uniform in
        [0, 1), the top `count` taken)."""
        labels = tf.cast(labels, tf.int32)
        batch_labels = labels if batch_labels is None else tf.cast(batch_labels, tf.int32)
        score = tf.random.stateless_uniform([self.units], seed)
        score = tf.tensor_scatter_nd_update(score, batch_labels[:, None],
                                            tf.fill(tf.shape(batch_labels), 2.0))
        index = tf.sort(tf.math.top_k(score, count, sorted=False).indices)
        centres = tf.gather(self.kernel.value, index)
        return self._cosines(features, centres), tf.searchsorted(index, labels)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)
                if self.kernel_regularizer else None}


def margin_logits(labels, logits, head, scale, margin, easy_margin=False):
    """The cosine `logits` (scale * cos) with `head`'s margin on each true class."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    cosine = tf.clip_by_value(tf.cast(logits, tf.float32) / scale, -1.0, 1.0)
    true = tf.gather(cosine, labels, batch_dims=1)
    if head == "cosface":
        margined = true - margin
    else:
        # sqrt's gradient is infinite at 0 (a feature parallel to its centre, cos = 1, where
        # the cosine's own gradient is 0: inf x 0 is NaN); sqrt is taken of positive gaps
        # only, so the value stays exact and the gradient finite.
        gap = 1.0 - true * true
        positive = gap > 0.0
        sine = tf.where(positive, tf.sqrt(tf.where(positive, gap, 1.0)), 0.0)
        margined = true * math.cos(margin) - sine * math.sin(margin)
        if easy_margin:
            margined = tf.where(true > 0, margined, true)
        else:
            # Past theta = pi - m, cos(theta + m) would grow again with theta; insightface
            # falls back to CosFace's margin of m * sin(m) there.
            margined = tf.where(true > math.cos(math.pi - margin), margined,
                                true - math.sin(math.pi - margin) * margin)
    hit = tf.one_hot(labels, tf.shape(cosine)[-1], on_value=True, off_value=False)
    return scale * tf.where(hit, margined[:, None], cosine)


@keras.saving.register_keras_serializable(package="kerasbn")
class MarginLoss(keras.losses.Loss):
    """Softmax cross entropy of `CosineClassifier` logits with `head`'s margin on the true
    class (`head` cosface or arcface; ArcFace's `easy_margin` as in its original code)."""

    def __init__(self, head, scale, margin, easy_margin=False, name="margin_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if head not in ("cosface", "arcface"):
            raise ValueError(f"unknown margin head {head!r}; choose cosface or arcface")
        self.head, self.scale, self.margin = head, float(scale), float(margin)
        self.easy_margin = bool(easy_margin)

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        logits = margin_logits(labels, y_pred, self.head, self.scale, self.margin,
                               self.easy_margin)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)

    def get_config(self):
        return {**super().get_config(), "head": self.head, "scale": self.scale,
                "margin": self.margin, "easy_margin": self.easy_margin}
