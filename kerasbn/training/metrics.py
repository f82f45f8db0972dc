"""Test metrics of a model over a dataset, and what a run's test records say (summary.json).

"Reached a target" is REFERENCE.md's: the first tested iteration whose test top-1 >= target;
a target on another metric (`verify_acc:0.9`) is reached the same way on that metric.
"""

import numpy as np
import tensorflow as tf

from kerasbn.data import records
from kerasbn.utils import errors


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


# Metrics a --target may name: recorded at tests, higher is better.
TARGET_METRICS = ("test_top1", "test_top5", "verify_acc", "verify_auc", "verify_tar@far=0.01",
                  "verify_tar@far=0.001")


def parse_target(text):
    """(metric, value) of a `METRIC:VALUE` target; a bare number is a test top-1 target."""
    metric, _, value = text.rpartition(":")
    metric = metric or "test_top1"
    if metric not in TARGET_METRICS:
        raise errors.UserError(f"--target={text}: the metric must be one of "
                         f"{', '.join(TARGET_METRICS)}")
    try:
        value = float(value)
    except ValueError:
        raise errors.UserError(f"--target={text}: expected METRIC:VALUE, e.g. verify_acc:0.9") \
            from None
    if not 0 < value <= 1:
        raise errors.UserError(f"--target={text}: the value must lie in (0, 1]")
    return metric, value


def target_name(target):
    """A target's key in summary.json: `0.8` for test top-1 (as before), else METRIC:VALUE."""
    metric, value = target
    return f"{value:g}" if metric == "test_top1" else f"{metric}:{value:g}"


def target_order(target):
    """Sort key of (metric, value) targets: top-1 first, then by metric; each ascending."""
    metric, value = target
    return metric != "test_top1", metric, value


def shown_target(name):
    """A summary.json target key as a person reads it: `top-1 0.8`, `verify_acc 0.9`."""
    return name.replace(":", " ") if ":" in name else f"top-1 {name}"


def summarize(entries, targets):
    """Best and final test top-1, and for each target the first iteration and wall time.

    `targets` are test top-1 values, or (metric, value) pairs."""
    if not entries:
        return {"tests": 0}
    best = max(entries, key=lambda e: (e["test_top1"], -e["iteration"]))
    reached = {}
    for target in targets:
        metric, value = target if isinstance(target, tuple) else ("test_top1", target)
        hit = next((e for e in entries if e.get(metric) is not None and e[metric] >= value),
                   None)
        reached[target_name((metric, value))] = (None if hit is None else
                                  {"iteration": hit["iteration"], "wall_time": hit["wall_time"]})
    final = entries[-1]
    summary = {"tests": len(entries),
               "best_test_top1": best["test_top1"], "best_iteration": best["iteration"],
               "final_test_top1": final["test_top1"], "final_iteration": final["iteration"],
               "final_wall_time": final["wall_time"], "targets": reached}
    verified = [e for e in entries if e.get("verify_acc") is not None]
    if verified:
        best = max(verified, key=lambda e: (e["verify_acc"], -e["iteration"]))
        summary.update(best_verify_acc=best["verify_acc"],
                       best_verify_iteration=best["iteration"],
                       final_verify={k: v for k, v in verified[-1].items()
                                     if k.startswith("verify_")})
    return summary


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
