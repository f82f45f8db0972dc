import numpy as np
import pytest
import tensorflow as tf

from kerasbn.evaluation import accuracy, target_metrics
from kerasbn.runs import test_records


def test_summary_tracks_every_target_as_the_reference_defines_it():
    entries = [{"iteration": i, "wall_time": 10.0 * i, "test_top1": a}
               for i, a in [(0, 0.1), (10, 0.55), (20, 0.5), (30, 0.81), (40, 0.79)]]
    summary = test_records.summarize(entries, [0.5, 0.8, 0.9])
    assert summary["targets"] == {"0.5": {"iteration": 10, "wall_time": 100.0},
                                  "0.8": {"iteration": 30, "wall_time": 300.0}, "0.9": None}
    assert (summary["best_test_top1"], summary["best_iteration"]) == (0.81, 30)
    assert (summary["final_test_top1"], summary["final_iteration"]) == (0.79, 40)
    assert not test_records.all_reached(summary)
    assert test_records.all_reached(test_records.summarize(entries, [0.5, 0.8]))
    assert not test_records.all_reached(test_records.summarize([], [0.5]))


def test_evaluate_counts_hits_and_mean_loss_against_numpy():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.5], [0.5, 0.4, 0.1],
                       [0.0, 0.0, 1.0]], np.float32)
    labels = np.array([0, 2, 2, 1, 0])
    step = accuracy.make_test_step(lambda x, training=False: x)
    data = tf.data.Dataset.from_tensor_slices((logits, labels)).batch(2)
    result = accuracy.evaluate(step, data)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    loss = -np.log(probabilities[np.arange(5), labels]).mean()
    assert result["count"] == 5 and result["top1"] == pytest.approx(2 / 5)
    assert result["top5"] == 1.0 and result["loss"] == pytest.approx(loss, rel=1e-5)
    assert accuracy.evaluate(step, data, max_batches=1)["count"] == 2


def test_ties_never_count_as_hits_and_non_finite_outputs_stop():
    step = accuracy.make_test_step(lambda x, training=False: x)
    constant = tf.data.Dataset.from_tensors((np.zeros((4, 10), np.float32), np.arange(4)))
    result = accuracy.evaluate(step, constant)
    assert (result["top1"], result["top5"]) == (0.0, 0.0)
    tie = np.array([[1.0, 1.0, 0.0]], np.float32)
    assert accuracy.evaluate(step, tf.data.Dataset.from_tensors((tie, [0])))["top1"] == 0.0
    broken = np.array([[np.nan, 0.0, 0.0]], np.float32)
    with pytest.raises(FloatingPointError, match="1 non-finite outputs"):
        accuracy.evaluate(step, tf.data.Dataset.from_tensors((broken, [1])))


def test_targets_on_other_metrics_are_reached_the_same_way():
    entries = [{"iteration": i, "wall_time": float(i), "test_top1": a, "verify_acc": v}
               for i, a, v in [(0, 0.1, 0.5), (10, 0.85, 0.7), (20, 0.9, 0.92)]]
    entries.insert(1, {"iteration": 5, "wall_time": 5.0, "test_top1": 0.5})  # not verified
    targets = [0.8, target_metrics.parse_target("verify_acc:0.9"), ("test_top5", 0.5)]
    summary = test_records.summarize(entries, targets)
    assert summary["targets"] == {"0.8": {"iteration": 10, "wall_time": 10.0},
                                  "verify_acc:0.9": {"iteration": 20, "wall_time": 20.0},
                                  "test_top5:0.5": None}
    assert target_metrics.parse_target("0.7") == ("test_top1", 0.7)
    assert target_metrics.shown_target("verify_acc:0.9") == "verify_acc 0.9"
    for bad, message in (("loss:0.5", "must be one of"), ("verify_acc:x", "METRIC:VALUE"),
                         ("verify_acc:2", r"\(0, 1\]")):
        with pytest.raises(ValueError, match=message):
            target_metrics.parse_target(bad)
