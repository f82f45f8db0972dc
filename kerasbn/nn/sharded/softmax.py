"""A replica's part of the sharded step, as arcface_torch's PartialFC_V2 and DistCrossEntropy
compute it: the rows of its shard it takes logits over (`draw`), those logits of the whole
global batch with the margin on the classes it owns (`shard_logits`), and a softmax cross
entropy over every replica's logits at once (`cross_entropy`), whose row maximum and sum of
exponentials are reduced across replicas."""

import tensorflow as tf

PADDING_LOGIT = -1e30


def draw_seed(seed, iteration, replica):
    """The stateless seed of `replica`'s draw at `iteration` of a run seeded `seed`: each
    shard draws its own negatives, afresh each step, the same again on resume."""
    return tf.random.experimental.stateless_fold_in(
        tf.stack([tf.cast(seed, tf.int64), tf.cast(iteration, tf.int64)]), replica)


def draw(labels, first, real, rows, take, seed):
    """The sorted rows of a shard (classes [first, first + real), padded to `rows`) that a
    step takes logits over, `take` of them: every row of a class in `labels` (the global
    batch's), filled up with others by a uniform score of the stateless `seed`, as
    PartialFC_V2.sample draws (positives score 2, others uniform in [0, 1), padding last)."""
    local = labels - first
    owned = tf.boolean_mask(local, (local >= 0) & (local < real))
    score = tf.random.stateless_uniform([rows], seed)
    score = tf.where(tf.range(rows) < real, score, -1.0)
    score = tf.tensor_scatter_nd_update(score, owned[:, None],
                                        tf.fill(tf.shape(owned), 2.0))
    return tf.sort(tf.math.top_k(score, take, sorted=False).indices)


def shard_logits(features, centres, index, labels, first, real, scale, margined):
    """(logits [B, taken] of the global batch's `features` against the shard's `centres`
    (its rows `index`, or every row with None), with `margined`(positions, logits) putting
    the margin on each class this shard owns; each label's position among them, -1 where
    another shard owns it)."""
    features = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1, epsilon=1e-12)
    centres = tf.math.l2_normalize(centres, axis=-1, epsilon=1e-12)
    logits = scale * tf.matmul(features, centres, transpose_b=True)
    rows = tf.range(tf.shape(centres)[0]) if index is None else index
    local = labels - first
    owned = (local >= 0) & (local < real)
    position = tf.where(owned, tf.searchsorted(rows, tf.where(owned, local, 0)), -1)
    logits = margined(position, logits)
    return tf.where(rows[None, :] < real, logits, PADDING_LOGIT), position


def cross_entropy(logits, positions, batch):
    """The mean softmax cross entropy of the global batch (`batch` rows) whose logits are
    split by class across the replicas, each replica's `logits` [batch, taken] with each
    label's `positions` among them (-1 where another replica holds it). The same value on
    every replica; the gradient to a replica's logits is its own part, (p - y) / batch, as
    DistCrossEntropy's backward gives it, with no collective."""
    context = tf.distribute.get_replica_context()
    hit = tf.one_hot(positions, tf.shape(logits)[1])

    @tf.custom_gradient
    def loss(z):
        # ReduceOp has no MAX: every replica's row maxima are gathered, then reduced.
        top = tf.reduce_max(context.all_gather(tf.reduce_max(z, axis=1)[None], axis=0),
                            axis=0)
        exp = tf.exp(z - top[:, None])
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(exp, axis=1))
        true = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(z * hit, axis=1))

        def gradient(upstream):
            return upstream * (exp / total[:, None] - hit) / tf.cast(batch, tf.float32)

        return tf.reduce_mean(tf.math.log(total) + top - true), gradient

    return loss(logits)
