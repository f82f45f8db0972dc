"""The cosine classifier of the margin heads: one centre per identity, and as logits
s * cos(theta) between the L2-normalised feature and each L2-normalised centre, in float32
under mixed precision. Those unmargined cosine logits are what the network outputs, so
evaluation, prediction and the SavedModel use them unchanged; Partial FC
(`kerasbn.nn.partial_fc`) trains on the logits of `CosineClassifier.sampled`."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kerasbn")
class CosineClassifier(keras.layers.Layer):
    """`scale` * cos(angle) between each L2-normalised feature and each of `units`
    L2-normalised class centres (no bias). The centres are a [units, features] `kernel`, one
    row per class, so a sampled step's gradient is a set of rows (`tf.IndexedSlices`)."""

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
