"""Partial FC (`--sample_classes F`): each training step takes its logits over ceil(F * K)
centres only, every class of the batch plus randomly drawn others (drawn from the seed and
iteration, so a resumed run draws the same), as insightface's partial_fc does. The centres'
gradient is then a `tf.IndexedSlices` of the drawn rows. With `--sample_update=drawn` (the
default, insightface's first Partial FC) `optimizers.CaffeSGD` updates only those rows
(momentum and weight decay included), so a centre that was not drawn is left exactly as it
was, momentum too, and a step costs the drawn rows alone. With `--sample_update=all`
(insightface's PartialFC_V2 today) every centre takes SGD's update, the undrawn ones with a
zero gradient: their momentum keeps moving them and weight decay shrinks them.
"""

import keras
import tensorflow as tf

import math

from kerasbn.nn import keras_compat, registry


def sample_count(num_classes, fraction):
    """How many centres a step of Partial FC with fraction `fraction` takes logits over."""
    return min(num_classes, math.ceil(fraction * num_classes))


def least_fraction(batch_size, num_classes):
    """The smallest --sample_classes (to 3 decimals, rounded up) that draws `batch_size` of
    `num_classes` centres: what a refusal of too few asks for."""
    return math.ceil(batch_size / num_classes * 1000) / 1000


@keras.saving.register_keras_serializable(package="kerasbn")
class SampledTraining(keras.Model):
    """A network with a `CosineClassifier` whose training steps take their logits over
    `count` sampled centres (Partial FC); calling it, testing and exporting it use every
    centre, as the same network without sampling would."""

    def __init__(self, inputs, outputs, count, seed=0, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        self.count, self.seed = int(count), int(seed)
        # Outside Keras's tracking: the same layers, so neither weights nor checkpoint
        # entries are added.
        object.__setattr__(self, "_features", keras.Model(
            self.inputs, self.get_layer(registry.CLASSIFIER).input))

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        seed = tf.stack([tf.constant(self.seed, tf.int64),
                         tf.cast(self.optimizer.iterations, tf.int64)])
        # Every replica draws for the whole global batch, so they all take the same centres
        # as one device would.
        context = tf.distribute.get_replica_context()
        batch_labels = context.all_gather(labels, axis=0) \
            if context.num_replicas_in_sync > 1 else labels
        with tf.GradientTape() as tape:
            features = self._features(images, training=True)
            logits, targets = self.get_layer(registry.CLASSIFIER).sampled(features, labels, self.count,
                                                                 seed, batch_labels)
            loss = keras_compat.compute_loss(self, images, targets, logits)
            keras_compat.track_loss(self, loss, tf.shape(images)[0])
            loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self.compute_metrics(images, targets, logits)

    def get_config(self):
        return {**super().get_config(), "count": self.count, "seed": self.seed}
