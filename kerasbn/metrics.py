"""Test metrics of a model over a dataset, and what a run's test records say (summary.json).

"Reached a target" is REFERENCE.md's: the first tested iteration whose test top-1 >= target.
"""

import numpy as np
import tensorflow as tf


def make_test_step(model):
    """A compiled step returning (summed loss, top-1 hits, top-5 hits, count) of one batch."""

    @tf.function(reduce_retracing=True)
    def step(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        labels = tf.cast(labels, tf.int32)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        k = min(5, logits.shape[-1])
        top1 = tf.math.in_top_k(labels, logits, 1)
        topk = tf.math.in_top_k(labels, logits, k)
        return (tf.reduce_sum(loss), tf.reduce_sum(tf.cast(top1, tf.float32)),
                tf.reduce_sum(tf.cast(topk, tf.float32)), tf.size(labels))

    return step


def evaluate(test_step, dataset, max_batches=0):
    """{loss, top1, top5} over `dataset` (the first `max_batches` batches when > 0)."""
    if max_batches:
        dataset = dataset.take(max_batches)
    totals = np.zeros(4)
    for images, labels in dataset:
        totals += [float(t) for t in test_step(images, labels)]
    loss, top1, top5, count = totals
    if not count:
        raise ValueError("the test split yielded no images")
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "count": int(count)}


def summarize(entries, targets):
    """Best and final test top-1, and for each target the first iteration and wall time."""
    if not entries:
        return {"tests": 0}
    best = max(entries, key=lambda e: (e["test_top1"], -e["iteration"]))
    reached = {}
    for target in targets:
        hit = next((e for e in entries if e["test_top1"] >= target), None)
        reached[f"{target:g}"] = (None if hit is None else
                                  {"iteration": hit["iteration"], "wall_time": hit["wall_time"]})
    final = entries[-1]
    return {"tests": len(entries),
            "best_test_top1": best["test_top1"], "best_iteration": best["iteration"],
            "final_test_top1": final["test_top1"], "final_iteration": final["iteration"],
            "final_wall_time": final["wall_time"], "targets": reached}


def all_reached(summary):
    """Whether a summary's run has reached every one of its targets."""
    targets = summary.get("targets")
    return bool(targets) and all(targets.values())


def stability(entries):
    """Mean absolute change of test top-1 between consecutive tests over the second half of
    the run: how much the test curve jumps once training has settled (REFERENCE.md's side
    study compared BN implementations by it)."""
    last = entries[-1]["iteration"]
    tail = [e["test_top1"] for e in entries if e["iteration"] >= last / 2]
    return float(np.mean(np.abs(np.diff(tail)))) if len(tail) > 1 else float("nan")


def median_speed(entries):
    """Median training images/s over the entries that measured it (None if none did)."""
    rates = [e["images_per_sec"] for e in entries if e.get("images_per_sec")]
    return float(np.median(rates)) if rates else None
