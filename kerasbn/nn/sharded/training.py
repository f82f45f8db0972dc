"""The network of a `--shard_classes` run: `ShardedClassifier` holds the centres as
`centres.CentreShards`, and `ShardedTraining`'s step is arcface_torch's: the global batch's
embeddings and labels all-gathered, each replica's logits over the rows of its shard it draws,
the margin on the classes it owns, `softmax.cross_entropy` across replicas, the embeddings'
gradient summed back to the replica that made them (the all-gather's own gradient), and the
backbone's gradients all-reduced by the optimizer as in any data-parallel step."""

import keras
import tensorflow as tf

from kerasbn.nn import keras_compat, registry
from kerasbn.nn.sharded import centres, softmax


class _LocalRows:
    """The rows of this replica's shard of a `CentreShards` variable, read and written as a
    tf.Variable's are (sparse_read, scatter_add, scatter_update): tf.distribute offers no
    scatter on an ON_READ variable, but its handle in a replica is that replica's own."""

    def __init__(self, variable):
        self.handle = variable.handle

    def sparse_read(self, rows):
        return tf.raw_ops.ResourceGather(resource=self.handle, indices=rows, dtype=tf.float32)

    def scatter_add(self, delta):
        return tf.raw_ops.ResourceScatterAdd(resource=self.handle, indices=delta.indices,
                                             updates=delta.values)

    def scatter_update(self, delta):
        return tf.raw_ops.ResourceScatterUpdate(resource=self.handle, indices=delta.indices,
                                                updates=delta.values)


@keras.saving.register_keras_serializable(package="kerasbn")
class ShardedClassifier(keras.layers.Layer):
    """`scale` * cos(angle) between each L2-normalised feature and each of `units` class
    centres held in shards across the replicas (`centres.CentreShards`, made at build, under
    the strategy's scope). Called, it gives the logits over every class (each shard's on its
    own device), as `CosineClassifier` does; training takes its logits in the step."""

    def __init__(self, units, scale, seed=0, momentum=True, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale = int(units), float(scale)
        self.seed, self.momentum = int(seed), bool(momentum)

    def build(self, input_shape):
        self.shards = centres.CentreShards(self.units, input_shape[-1], self.momentum,
                                           self.seed)

    def call(self, inputs):
        features = tf.math.l2_normalize(tf.cast(inputs, tf.float32), axis=-1, epsilon=1e-12)
        logits = []
        # Each shard's block on its own device; under several workers the other workers'
        # shards are gathered to this one.
        for value, count, _, _, device in self.shards.slices(self.shards.weights):
            with tf.device(device):
                rows = tf.math.l2_normalize(value(count), axis=-1, epsilon=1e-12)
                logits.append(self.scale * tf.matmul(features, rows, transpose_b=True))
        return tf.ensure_shape(tf.concat(logits, axis=1), [None, self.units])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale,
                "seed": self.seed, "momentum": self.momentum}


@keras.saving.register_keras_serializable(package="kerasbn")
class ShardedTraining(keras.Model):
    """A network ending in a `ShardedClassifier` whose training step is the sharded one,
    each replica taking logits over `take` rows of its shard (every row: exact softmax)."""

    def __init__(self, inputs, outputs, take, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        self.take = int(take)
        # Outside Keras's tracking: the same layers, so neither weights nor checkpoint
        # entries are added.
        object.__setattr__(self, "_features", keras.Model(
            self.inputs, self.get_layer(registry.CLASSIFIER).input))

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        head = self.get_layer(registry.CLASSIFIER)
        shards = head.shards
        context = tf.distribute.get_replica_context()
        replica, replicas = context.replica_id_in_sync_group, context.num_replicas_in_sync
        first, end = shards.bounds(replica)
        real = end - first
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        every_label = context.all_gather(labels, axis=0)
        batch = tf.shape(every_label)[0]
        if self.take < shards.rows:
            seed = softmax.draw_seed(shards.seed, self.optimizer.iterations, replica)
            index = softmax.draw(every_label, first, real, shards.rows, self.take, seed)
            weights = _LocalRows(shards.weights).sparse_read(index)
        else:
            index = None
            weights = tf.raw_ops.ReadVariableOp(resource=shards.weights.handle,
                                                dtype=tf.float32)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            tape.watch(weights)
            # Gathered in float32, as arcface_torch gathers them: TensorFlow's collectives take
            # no bfloat16, and the logits are float32 anyway.
            features = context.all_gather(
                tf.cast(self._features(images, training=True), tf.float32), axis=0)
            logits, positions = softmax.shard_logits(features, weights, index, every_label,
                                                     first, real, head.scale,
                                                     self.loss.margined)
            loss = softmax.cross_entropy(logits, positions, batch)
            regular = tf.cast(tf.add_n(self.losses), tf.float32) if self.losses else 0.0
            keras_compat.track_loss(self, (loss + regular) / replicas, tf.shape(images)[0])
            # The regularisers' terms as Keras adds them: divided among the replicas, whose
            # gradients the optimizer sums.
            scaled = self.optimizer.scale_loss(loss + regular / replicas)
        gradients = tape.gradient(scaled, [*variables, weights])
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                for g in gradients if g is not None])
        # Every replica moves its shard or none does, as the optimizer decides for the
        # backbone when loss scaling finds an overflow.
        finite = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                    tf.cast(finite, tf.int32)) == replicas
        tf.cond(finite, lambda: self._update_centres(shards, index, gradients[-1]),
                lambda: None)
        self.optimizer.apply_gradients(zip(gradients[:-1], variables))
        return self.get_metrics_result()

    def _update_centres(self, shards, index, gradient):
        """The solver's update of this replica's shard: the drawn rows (every row when none
        is drawn), or with the solver's `every_row` every row, the undrawn ones with a zero
        gradient (PartialFC_V2)."""
        gradient = gradient / self.optimizer.scale_loss(tf.constant(1.0))
        solver = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if index is not None and solver.every_row:
            gradient = tf.scatter_nd(index[:, None], gradient, [shards.rows, shards.dim])
            index = None
        rows = tf.range(shards.rows) if index is None else index
        weights = _LocalRows(shards.weights)
        momentum = None if shards.momentum is None else _LocalRows(shards.momentum)
        velocity, delta = solver.row_step(
            weights.sparse_read(rows), None if momentum is None else momentum.sparse_read(rows),
            gradient, solver.learning_rate)
        if velocity is not None:
            momentum.scatter_update(tf.IndexedSlices(velocity, rows))
        weights.scatter_add(tf.IndexedSlices(delta, rows))

    def get_config(self):
        return {**super().get_config(), "take": self.take}
