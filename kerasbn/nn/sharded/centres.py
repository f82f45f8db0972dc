"""The centres of `--shard_classes`: replica r of R holds the rows of classes
[r*C//R, (r+1)*C//R) and their momentum, and no device holds the whole matrix while training.

Each shard is a component of a `tf.Variable` with `synchronization=ON_READ` (one value per
replica, which tf.distribute neither mirrors nor reduces), padded to ceil(C/R) rows. A
checkpoint stores the centres (and the momentum) as one [C, d] tensor written in slices, one
per shard (TensorFlow's partitioned-variable format), and a restore reads the slices of the
shards it has, so a run resumes on any replica count, one device included. The rows start as
arcface_torch's do, normal(0, 0.01), drawn in fixed blocks of rows from the seed, so the first
centres are the same whatever the replica count.
"""

import functools

import tensorflow as tf
from tensorflow.python.training.saving import saveable_object

from kerasbn.nn import partial_fc

BLOCK_ROWS = 4096
INIT_STDDEV = 0.01


def bounds(num_classes, replicas, replica):
    """(first class, end) of replica `replica`'s shard: [r*C//R, (r+1)*C//R)."""
    return replica * num_classes // replicas, (replica + 1) * num_classes // replicas


def shard_rows(num_classes, replicas):
    """The rows every shard holds, padded: ceil(C/R)."""
    return -(-num_classes // replicas)


def footprint(num_classes, dim, shards, batch_size, sample_classes=1.0, momentum=True):
    """(centre bytes, logits bytes) per replica of a classifier in `shards` shards (1: the
    whole matrix on every replica): its float32 rows with their momentum, and the float32
    logits of a step, `batch_size` rows (a sharded step's: the global batch) against the
    rows a replica takes logits over."""
    rows = shard_rows(num_classes, shards)
    taken = partial_fc.sample_count(rows, sample_classes)
    return rows * dim * 4 * (2 if momentum else 1), batch_size * taken * 4


def _initial_rows(seed, first, count, dim):
    """Rows [first, first + count) of the seed's normal(0, 0.01) matrix, drawn block by block
    so they do not depend on where a shard starts."""
    start = first // BLOCK_ROWS
    blocks = tf.range(start, (first + count + BLOCK_ROWS - 1) // BLOCK_ROWS)
    drawn = tf.map_fn(
        lambda block: tf.random.stateless_normal(
            [BLOCK_ROWS, dim], tf.stack([tf.cast(seed, tf.int64), tf.cast(block, tf.int64)]),
            stddev=INIT_STDDEV),
        blocks, fn_output_signature=tf.float32)
    drawn = tf.reshape(drawn, [-1, dim])
    return drawn[first - start * BLOCK_ROWS:][:count]


class _Slices(saveable_object.SaveableObject):
    """One [C, d] tensor of the checkpoint, written as the shards' slices and read back as
    the slices of the shards that restore it (TensorFlow's SaveableObject: its
    `_serialize_to_tensors` keeps one tensor per name, which slices need several of)."""

    def __init__(self, shards, variable, name):
        self.shards, self.variable = shards, variable
        specs = [saveable_object.SaveSpec(functools.partial(value, count), spec, name,
                                          dtype=tf.float32, device=device)
                 for value, count, spec, _, device in shards.slices(variable)]
        super().__init__(variable, specs, name)

    def restore(self, restored_tensors, restored_shapes):
        return self.shards.assign_slices(self.variable, restored_tensors)


class CentreShards(tf.__internal__.tracking.Trackable):
    """The shards of a [num_classes, dim] matrix of centres (and their momentum) under the
    current strategy; created inside its scope."""

    def __init__(self, num_classes, dim, momentum=True, seed=0):
        self.strategy = strategy = tf.distribute.get_strategy()
        self.num_classes, self.dim, self.seed = int(num_classes), int(dim), int(seed)
        self.replicas = strategy.num_replicas_in_sync
        self.rows = shard_rows(self.num_classes, self.replicas)
        if self.num_classes < self.replicas:
            raise ValueError(f"{self.num_classes} classes cannot be sharded over "
                             f"{self.replicas} replicas")

        def shard(name):
            return tf.Variable(tf.zeros([self.rows, self.dim]), trainable=False, name=name,
                               synchronization=tf.VariableSynchronization.ON_READ,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        self.weights = shard("centres")
        self.momentum = shard("centre_momentum") if momentum else None
        replica = tf.function(lambda: strategy.run(
            lambda: tf.distribute.get_replica_context().replica_id_in_sync_group))()
        self.local_replicas = [int(r) for r in strategy.experimental_local_results(replica)]
        self.initialise()

    def bounds(self, replica):
        """(first class, end) of `replica`'s shard."""
        return bounds(self.num_classes, self.replicas, replica)

    def initialise(self):
        """Every local shard's rows from the seed (arcface_torch's normal(0, 0.01)), padding
        and momentum zero."""
        for replica, weights in zip(self.local_replicas, self.local_values(self.weights)):
            first, end = self.bounds(replica)
            with tf.device(weights.device):
                rows = _initial_rows(self.seed, first, end - first, self.dim)
                weights.assign(tf.pad(rows, [[0, self.rows - (end - first)], [0, 0]]))
        if self.momentum is not None:
            for momentum in self.local_values(self.momentum):
                momentum.assign(tf.zeros_like(momentum))

    def local_values(self, variable):
        """The components of shard variable `variable` this process holds, in the order of
        `local_replicas`."""
        return self.strategy.experimental_local_results(variable) \
            if self.replicas > 1 else [variable]

    def slices(self, variable):
        """(value(count), count, slice spec, replica, device) of each shard this process
        writes and reads: its own shards, or every shard under several workers (gathered at
        save, since only the chief's file is kept)."""
        strategy = self.strategy
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # One all-gather serves every shard's slice.
            gathered = functools.cache(lambda: strategy.experimental_local_results(
                strategy.run(lambda: tf.distribute.get_replica_context().all_gather(
                    tf.identity(variable)[None], axis=0)))[0])
            device = self.local_values(variable)[0].device
            shards = [(lambda count, r=r: gathered()[r][:count], r, device)
                      for r in range(self.replicas)]
        else:
            shards = [(lambda count, v=v: v.read_value()[:count], r, v.device)
                      for v, r in zip(self.local_values(variable), self.local_replicas)]
        out = []
        for value, replica, device in shards:
            first, end = self.bounds(replica)
            if end > first:
                out.append((value, end - first,
                            f"{self.num_classes} {self.dim} {first},{end - first}:-", replica,
                            device))
        return out

    def assign_slices(self, variable, tensors):
        """Writes restored slices (in `slices` order) into this process's shards."""
        local = dict(zip(self.local_replicas, self.local_values(variable)))
        return tf.group([
            local[replica].assign(tf.pad(tensor, [[0, self.rows - count], [0, 0]]))
            for tensor, (_, count, _, replica, _) in zip(tensors, self.slices(variable))
            if replica in local])

    def _gather_saveables_for_checkpoint(self):
        saveables = {"centres": functools.partial(_Slices, self, self.weights)}
        if self.momentum is not None:
            saveables["momentum"] = functools.partial(_Slices, self, self.momentum)
        return saveables

    def whole(self, variable=None):
        """The whole [C, d] matrix (for an export or a comparison): the shards' rows
        concatenated."""
        variable = self.weights if variable is None else variable
        slices = self.slices(variable)
        if sum(count for _, count, *_ in slices) != self.num_classes:
            raise ValueError("this process holds only some of the shards")
        return tf.concat([value(count) for value, count, *_ in slices], axis=0)
