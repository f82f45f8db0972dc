"""CosFace and ArcFace: the margin heads. Their classifier is `cosine.CosineClassifier`; the
margin belongs to training alone and lives in the loss, as in insightface's
CombinedMarginLoss: the true class's logit becomes s * (cos(theta) - m) for CosFace and
s * cos(theta + m) for ArcFace, before softmax cross entropy.

`--head=cosface` and `--head=arcface` (`MarginLoss`) are insightface's losses as written
before its commit 657ae30 (Dec 2022): ArcFace's gradient the analytic one, a fallback to
cos(theta) - m sin(m) past theta = pi - m. Their default (scale, margin) were chosen by the
sweep in BENCHMARKS.md ("Margin heads"). `--head=combined` (`CombinedMarginLoss`) is today's:
`--margins=m1,m2,m3` as insightface's margin_list, ArcFace's margin with no fallback and a
straight-through gradient, and interclass filtering.
"""

import math

import keras
import tensorflow as tf

from kerasbn.nn import registry
from kerasbn.nn.heads.cosine import CosineClassifier


def margin_logits(labels, logits, head, scale, margin, easy_margin=False):
    """The cosine `logits` (scale * cos) with `head`'s margin on each true class (a label of
    -1: its class is not among these logits, a shard's of `--shard_classes`)."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    cosine = tf.clip_by_value(tf.cast(logits, tf.float32) / scale, -1.0, 1.0)
    true = tf.gather(cosine, tf.maximum(labels, 0), batch_dims=1)
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


def combined_logits(labels, logits, scale, margins, threshold=0.0):
    """The cosine `logits` (scale * cos) as insightface's CombinedMarginLoss makes them today
    (recognition/arcface_torch/losses.py after commit 657ae30, Dec 2022), `margins` its
    (m1, m2, m3) with m1 = 1: ArcFace (m3 = 0) puts cos(theta + m2) on the true class, with
    no fallback past theta = pi - m2, computed outside autograd, so the gradient passes
    straight through as if there were no margin (dL/dcos = s (p - y)); CosFace (m3 > 0) puts
    cos - m3 there, its gradient the analytic one. With `threshold`, a class other than the
    true one whose cosine exceeds it counts 0 (interclass filtering), its gradient 0. A label
    of -1 has no class among these logits."""
    _, m2, m3 = margins
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    cosine = tf.clip_by_value(tf.cast(logits, tf.float32) / scale, -1.0, 1.0)
    hit = tf.one_hot(labels, tf.shape(cosine)[-1], on_value=True, off_value=False)
    if threshold > 0:
        dirty = tf.logical_and(cosine > threshold, tf.logical_not(hit))
        cosine = cosine * tf.stop_gradient(tf.cast(tf.logical_not(dirty), tf.float32))
    true = tf.gather(cosine, tf.maximum(labels, 0), batch_dims=1)
    if m3 > 0:
        margined = true - m3
    else:
        margined = true + tf.stop_gradient(tf.cos(tf.acos(true) + m2) - true)
    return scale * tf.where(hit, margined[:, None], cosine)


@keras.saving.register_keras_serializable(package="kerasbn")
class CombinedMarginLoss(keras.losses.Loss):
    """Softmax cross entropy of `CosineClassifier` logits made by `combined_logits`."""

    def __init__(self, scale, margins, threshold=0.0, name="combined_margin_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale, self.margins = float(scale), tuple(float(m) for m in margins)
        self.threshold = float(threshold)

    def margined(self, labels, logits):
        """`logits` with the margin on each label's class (none for a label of -1)."""
        return combined_logits(labels, logits, self.scale, self.margins, self.threshold)

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, self.margined(labels, y_pred))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margins": list(self.margins),
                "threshold": self.threshold}


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

    def margined(self, labels, logits):
        """`logits` with the margin on each label's class (none for a label of -1)."""
        return margin_logits(labels, logits, self.head, self.scale, self.margin,
                             self.easy_margin)

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, self.margined(labels, y_pred))

    def get_config(self):
        return {**super().get_config(), "head": self.head, "scale": self.scale,
                "margin": self.margin, "easy_margin": self.easy_margin}


def resolved(head, scale=None, margin=None):
    """(scale, margin) of margin head `head`: the values given, else the head's defaults."""
    default_scale, default_margin = registry.HEADS[head].defaults
    return (default_scale if scale is None else float(scale),
            default_margin if margin is None else float(margin))


def _classifier(units, settings, kernel, bias_regularizer):
    if not settings.decay_centres:
        kernel = {**kernel, "kernel_regularizer": None}
    return CosineClassifier(units, resolved(settings.head, settings.scale)[0], **kernel)


def _loss(settings):
    scale, margin = resolved(settings.head, settings.scale, settings.margin)
    return MarginLoss(settings.head, scale, margin, settings.easy_margin)


def _combined_loss(settings):
    return CombinedMarginLoss(resolved(settings.head, settings.scale)[0], settings.margins,
                              settings.interclass_filtering_threshold)


registry.register_head("cosface", classifier=_classifier, loss=_loss, defaults=(30.0, 0.35),
                       margin_limit=1.0, samples=True, title="CosFace")
registry.register_head("arcface", classifier=_classifier, loss=_loss, defaults=(30.0, 0.3),
                       margin_limit=math.pi / 2, easy_margin=True, samples=True,
                       title="ArcFace")
registry.register_head("combined", classifier=_classifier, loss=_combined_loss,
                       defaults=(64.0, None), samples=True, margins=True,
                       title="insightface's CombinedMarginLoss")
