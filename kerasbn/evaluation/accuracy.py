"""Closed-set accuracy: a network's test loss, top-1 and top-5 over a dataset's split, as
training's tests and `evaluate` both report them."""

import numpy as np
import tensorflow as tf

from kerasbn.data import records


def make_test_step(model):
    """A compiled step returning (summed loss, each image's top-1 hit, top-5 hits, count,
    non-finite outputs) of one batch.

    A hit needs the true class strictly ahead of all but k - 1 others: a tie counts against
    it, so a network whose outputs are all equal scores 0, not 1 (in_top_k counts ties as
    hits).
    """

    @tf.function(reduce_retracing=True)
    def step(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        labels = tf.cast(labels, tf.int32)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        true = tf.gather(logits, labels, batch_dims=1)
        rank = tf.reduce_sum(tf.cast(logits >= true[:, None], tf.int32), axis=1) - 1
        k = min(5, logits.shape[-1])
        bad = tf.reduce_sum(tf.cast(~tf.math.is_finite(logits), tf.int32))
        return (tf.reduce_sum(loss), rank < 1, tf.reduce_sum(tf.cast(rank < k, tf.float32)),
                tf.size(labels), bad)

    return step


def evaluate(test_step, dataset, max_batches=0, num_classes=0, progress=None):
    """{loss, top1, top5, count} over `dataset` (the first `max_batches` batches when > 0);
    with `num_classes`, also `class_hits` and `class_counts`, the top-1 hits and images of
    each class, from the same pass. `progress` (a `Progress`) counts the images.

    Raises FloatingPointError when the network's outputs are not finite: no accuracy is
    claimed from them.
    """
    if max_batches:
        dataset = dataset.take(max_batches)
    totals = np.zeros(5)
    class_hits, class_counts = np.zeros(num_classes), np.zeros(num_classes)
    for images, labels in dataset:
        loss, hits, top5, count, bad = test_step(images, labels)
        totals += [float(loss), float(np.sum(hits)), float(top5), float(count), float(bad)]
        if num_classes:
            np.add.at(class_hits, labels.numpy(), hits.numpy())
            np.add.at(class_counts, labels.numpy(), 1)
        if progress:
            progress.update(int(count))
    loss, top1, top5, count, bad = totals
    if not count:
        raise records.DataError("the test split yielded no images; rebuild the dataset with "
                                "a non-empty test split")
    if bad:
        raise FloatingPointError(f"the network gave {int(bad)} non-finite outputs on the test "
                                 "split; lower --base_lr, check --bn_epsilon, or resume from "
                                 "an earlier checkpoint")
    result = {"loss": loss / count, "top1": top1 / count, "top5": top5 / count,
              "count": int(count)}
    if num_classes:
        result.update(class_hits=class_hits, class_counts=class_counts)
    return result
