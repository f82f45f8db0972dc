import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasbn.runs.run_dir import RunDir
from kerasbn.training import callbacks


def _model(optimizer=None):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer or keras.optimizers.SGD(0.01), "mse")
    return model


def _data(batches, bad=None, value=np.nan):
    x = np.ones((batches, 2), np.float32)
    if bad is not None:
        x[bad] = value
    return tf.data.Dataset.from_tensor_slices((x, np.ones((batches, 1), np.float32))).batch(1)


class Recorder(callbacks.IterationCallback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_iteration(self, iteration, logs):
        self.seen.append(iteration)


def test_an_update_skipped_by_loss_scaling_is_not_an_iteration():
    model = _model(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01)))
    recorder = Recorder()
    model.fit(_data(5, bad=1, value=np.inf), callbacks=[recorder], verbose=0, shuffle=False)
    assert recorder.seen == [1, 2, 3, 4]
    # A second fit (train.py refits after skipped updates) continues the count.
    model.fit(_data(2), callbacks=[recorder], verbose=0, shuffle=False)
    assert recorder.seen == [1, 2, 3, 4, 5, 6]


def test_nan_guard_stops_and_names_the_iteration():
    with pytest.raises(FloatingPointError, match="at iteration 3"):
        _model().fit(_data(6, bad=2), callbacks=[callbacks.NanGuard()], verbose=0, shuffle=False)


class FakeManager:
    def __init__(self):
        self.saved = []

    def save(self, checkpoint_number, options=None):
        self.saved.append(checkpoint_number)


def test_snapshot_every_n_at_max_iter_and_when_training_stops():
    manager, wall_time = FakeManager(), tf.Variable(0.0, dtype=tf.float64)
    position = tf.Variable(7, dtype=tf.int64)
    clock = callbacks.Clock(offset=100.0)
    snapshot = callbacks.Snapshot(manager, 4, 10, clock, wall_time, position)
    _model().fit(_data(10), callbacks=[snapshot], verbose=0, shuffle=False)
    assert manager.saved == [4, 8, 10] and position.numpy() == 17
    assert wall_time.numpy() >= 100.0 and clock.paused > 0
    never = FakeManager()
    stopper = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: setattr(model, "stop_training", batch == 5))
    model = _model()
    snapshot = callbacks.Snapshot(never, 0, 10, clock, wall_time, position)
    model.fit(_data(10), callbacks=[stopper, snapshot], verbose=0, shuffle=False)
    assert never.saved == [6]


def test_periodic_test_records_and_stop_at_target(tmp_path):
    run = RunDir(str(tmp_path))
    accuracies = iter([0.2, 0.5, 0.9, 0.95])
    evaluate = lambda iteration: {"loss": 1.0, "top1": next(accuracies), "top5": 1.0,
                                  "count": 8}
    clock = callbacks.Clock()
    writer = tf.summary.create_file_writer(str(tmp_path / "tb"))
    progress = callbacks.ProgressDisplay(2, 12, 1, clock, writer, 0)
    tester = callbacks.PeriodicTest(run, evaluate, 3, 12, (0.4, 0.8), clock, progress, writer,
                                    [])
    stop = callbacks.StopAtTarget(tester)
    assert not stop.stopped
    model = _model()
    model.fit(_data(12), callbacks=[progress, tester, stop], verbose=0, shuffle=False)
    entries = run.read_metrics()
    assert [e["iteration"] for e in entries] == [3, 6, 9]
    assert [e["test_top1"] for e in entries] == [0.2, 0.5, 0.9]
    assert entries[-1]["train_loss"] is not None and entries[-1]["images_per_sec"] > 0
    assert entries[-1]["lr"] == pytest.approx(0.01)
    assert stop.stopped and model.optimizer.iterations.numpy() == 9
    summary = tester.summary
    assert summary["targets"] == {"0.4": {"iteration": 6, "wall_time": entries[1]["wall_time"]},
                                  "0.8": {"iteration": 9, "wall_time": entries[2]["wall_time"]}}
    rerun = callbacks.StopAtTarget(callbacks.PeriodicTest(
        run, evaluate, 3, 12, (0.4, 0.8), clock, progress, writer, entries))
    assert rerun.stopped


def test_clock_continues_a_resumed_runs_wall_time():
    clock = callbacks.Clock(offset=50.0)
    with clock.pause():
        pass
    assert 50.0 <= clock.elapsed() < 60.0 and clock.paused >= 0.0


def test_the_steady_rate_leaves_out_the_first_iteration_and_the_pauses(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    clock = callbacks.Clock()
    writer = tf.summary.create_file_writer(str(tmp_path / "tb"))
    progress = callbacks.ProgressDisplay(2, 5, 8, clock, writer, 0)
    progress.set_model(_model())
    assert progress.steady_images_per_sec() is None
    # Iteration 1 ends at 130 (tracing); 2-5 take 1 s each, with a 0.5 s test after 2.
    for iteration, seconds in [(1, 130.0), (2, 131.0), (3, 132.5), (4, 133.5), (5, 134.5)]:
        if iteration == 3:
            now[0] = 131.0
            with clock.pause():
                now[0] = 131.5
        now[0] = seconds
        progress.on_iteration(iteration, {"loss": 1.0})
    assert progress.steady_images_per_sec() == pytest.approx(4 * 8 / (134.5 - 130.0 - 0.5))
