"""Training events by iteration, as Caffe's solver has them, each a Keras callback with one job:
`NanGuard`, `ProgressDisplay`, `PeriodicTest`, `BestCheckpoint`, `StopAtTarget`,
`StopOnSignal`, `Snapshot`, and `StopWhenBehind` for calls of several iterations.

Keras counts epochs and batches; these count iterations (finished weight updates: the
optimizer's `iterations`, which counts updates also when gradients accumulate over
`iter_size` batches), so tests, logs and checkpoints land on the same iterations after a
resume, and a batch whose update loss scaling skipped is no iteration.
Pass them to `fit` in that order: a test reads the last display's loss and rate, the stop
reads the test, and the snapshot saves whenever training is about to stop.
"""

import contextlib
import math
import time

import keras
import tensorflow as tf

from kerasbn.evaluation import target_metrics
from kerasbn.runs import checkpoints, test_records
from kerasbn.utils import faults
from kerasbn.utils.progress import format_seconds


class Clock:
    """The run's wall time, continued from `offset` seconds (a resume's), and the time spent
    outside training steps (tests, checkpoints), which the training rate leaves out."""

    def __init__(self, offset=0.0):
        self.offset = offset
        self.start = time.perf_counter()
        self.paused = 0.0

    def elapsed(self):
        return self.offset + time.perf_counter() - self.start

    @contextlib.contextmanager
    def pause(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - start


def current_lr(model):
    """The optimizer's learning rate now, as a plain float (8 significant digits)."""
    rate = tf.convert_to_tensor(model.optimizer.learning_rate)
    return float(f"{float(rate):.8g}")


def loss_scale(model):
    """The dynamic loss scale of a mixed_float16 model's optimizer now; None without one."""
    scale = getattr(model.optimizer, "dynamic_scale", None)
    return None if scale is None else float(scale.numpy())


class IterationCallback(keras.callbacks.Callback):
    """Calls `on_iteration(iteration, logs)` once per finished weight update."""

    def __init__(self):
        super().__init__()
        self.last_iteration = None

    def iteration(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        self.last_iteration = self.iteration()

    def on_train_batch_end(self, batch, logs=None):
        iteration = self.iteration()
        if iteration != self.last_iteration:
            self.last_iteration = iteration
            faults.point("iteration", iteration)
            self.on_iteration(iteration, logs or {})

    def on_iteration(self, iteration, logs):
        raise NotImplementedError


class NanGuard(IterationCallback):
    """Ends the run with FloatingPointError naming the iteration whose loss is not finite
    (as Keras's TerminateOnNaN, but loud: no checkpoint of broken weights follows)."""

    def on_iteration(self, iteration, logs):
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            self.model.stop_training = True
            raise FloatingPointError(
                f"the training loss became {loss} at iteration {iteration}; lower --base_lr "
                "or resume from the last checkpoint")


class ProgressDisplay(IterationCallback):
    """Every `every` iterations and at `max_iter`: a line with loss, rate, images/s and ETA,
    and the same as TensorBoard scalars. Keeps the last `train_loss` and `images_per_sec`;
    `steady_images_per_sec()` is the rate from the end of the first iteration to the last
    display, tests and checkpoints excluded: what a cached-batch benchmark of the step
    measures, for the whole run."""

    def __init__(self, every, max_iter, images_per_iteration, clock, writer, start_iter):
        super().__init__()
        self.every = every
        self.max_iter = max_iter
        self.images_per_iteration = images_per_iteration
        self.clock = clock
        self.writer = writer
        self.start_iter = start_iter
        self.window = (time.perf_counter(), start_iter, clock.paused)
        self.train_loss = None
        self.images_per_sec = None
        self.steady = None

    def steady_images_per_sec(self):
        if self.steady is None or self.window[1] <= self.steady[1]:
            return None
        (start, first, paused), (end, last, paused_end) = self.steady, self.window
        seconds = max(end - start - (paused_end - paused), 1e-9)
        return (last - first) * self.images_per_iteration / seconds

    def on_iteration(self, iteration, logs):
        now = time.perf_counter()
        if self.steady is None:
            # The first iteration traces the step: left out, as a benchmark's warm-up is.
            self.steady = (now, iteration, self.clock.paused)
        if iteration % self.every and iteration != self.max_iter:
            return
        since, first, paused = self.window
        seconds = max(now - since - (self.clock.paused - paused), 1e-9)
        self.images_per_sec = (iteration - first) * self.images_per_iteration / seconds
        self.train_loss = float(logs["loss"])
        self.window = (now, iteration, self.clock.paused)
        lr = current_lr(self.model)
        done = iteration - self.start_iter
        eta = (self.max_iter - iteration) * (now - self.clock.start) / max(done, 1)
        scale = loss_scale(self.model)
        scaled = "" if scale is None else f"  loss scale {scale:g}"
        print(f"iter {iteration}/{self.max_iter}  loss {self.train_loss:.4f}  lr {lr:.3g}  "
              f"{self.images_per_sec:.0f} images/s{scaled}  ETA {format_seconds(eta)}",
              flush=True)
        with self.writer.as_default(step=iteration):
            tf.summary.scalar("loss", self.train_loss)
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("images_per_sec", self.images_per_sec)
            if scale is not None:
                tf.summary.scalar("loss_scale", scale)
        self.writer.flush()
        self.model.reset_metrics()


class PeriodicTest(IterationCallback):
    """Every `interval` iterations and at `max_iter`: `evaluate(iteration)` ({loss, top1,
    top5, count}, and any `verify_*` figures), one metrics.jsonl record, summary.json, console
    lines, TensorBoard scalars, and a line when a target is first reached. Keeps the latest
    `summary`."""

    def __init__(self, run, evaluate, interval, max_iter, targets, clock, progress, writer,
                 entries):
        super().__init__()
        self.run = run
        self.evaluate = evaluate
        self.interval = interval
        self.max_iter = max_iter
        self.targets = targets
        self.clock = clock
        self.progress = progress
        self.writer = writer
        self.entries = list(entries)
        self.summary = test_records.summarize(self.entries, targets)
        self.tested_at = None

    def on_iteration(self, iteration, logs):
        if iteration % self.interval == 0 or iteration == self.max_iter:
            with self.clock.pause():
                self.test(iteration)

    def test(self, iteration):
        result = self.evaluate(iteration)
        entry = {"iteration": iteration, "wall_time": round(self.clock.elapsed(), 3),
                 "lr": current_lr(self.model), "train_loss": self.progress.train_loss,
                 "test_loss": result["loss"], "test_top1": result["top1"],
                 "test_top5": result["top5"], "images_per_sec": self.progress.images_per_sec,
                 "test_seconds": round(result.get("seconds", 0.0), 3)}
        verified = {k: round(v, 3) if k == "verify_seconds" else v
                    for k, v in result.items() if k.startswith("verify_")}
        entry.update(verified)
        sets = result.get("sets", {})
        per_set = {f"{name}_{k[len('verify_'):]}": v
                   for name, figures in sets.items() for k, v in figures.items()}
        entry.update(per_set)
        self.entries = [e for e in self.entries if e["iteration"] < iteration] + [entry]
        self.run.append_metrics(entry)
        self.summary = test_records.summarize(self.entries, self.targets)
        self.run.write_summary(self.summary)
        self.tested_at = iteration
        print(f"test  iter {iteration}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}"
              f"  loss {result['loss']:.4f}  ({result['count']} images, "
              f"{entry['test_seconds']:.1f}s)", flush=True)
        if "verify_acc" in verified:
            print(_verify_line("verify", iteration, verified)
                  + f"  ({verified.get('verify_seconds', 0.0):.1f}s)", flush=True)
        for name, figures in sets.items():
            print(_verify_line(name, iteration, figures), flush=True)
        with self.writer.as_default(step=iteration):
            tf.summary.scalar("loss", result["loss"])
            tf.summary.scalar("top1", result["top1"])
            tf.summary.scalar("top5", result["top5"])
            for key, value in {**verified, **per_set}.items():
                if isinstance(value, float):
                    tf.summary.scalar(key, value)
            for target, hit in self.summary["targets"].items():
                if hit and hit["iteration"] == iteration:
                    print(f"target {target_metrics.shown_target(target)} reached at iteration {iteration} "
                          f"({hit['wall_time']:.0f}s)", flush=True)
                    tf.summary.scalar(f"iterations_to_{target}", iteration)
                    tf.summary.scalar(f"seconds_to_{target}", hit["wall_time"])
        self.writer.flush()


def _verify_line(name, iteration, figures):
    """A console line of one verification set's `verification.summarize` figures."""
    tars = "  ".join(f"TAR@FAR={k.split('=')[1]} " + ("-" if v is None else f"{v:.4f}")
                     for k, v in figures.items() if k.startswith("verify_tar"))
    vals = "  ".join(f"VAL@FAR={k.split('=')[1]} {v:.4f}" for k, v in figures.items()
                     if k.startswith("verify_val@") and not k.endswith("_std"))
    return (f"{name} iter {iteration}: accuracy {figures['verify_acc']:.4f}  AUC "
            f"{figures['verify_auc']:.4f}  EER {figures['verify_eer']:.4f}  {tars} (pooled)  "
            f"{vals} (10-fold)")


class BestCheckpoint(IterationCallback):
    """After each test of `tester` whose `metric` beats every earlier test's, saves the
    weights with `manager` (apart from the rotating snapshots, so the best survives them)."""

    def __init__(self, tester, manager, metric):
        super().__init__()
        self.tester = tester
        self.manager = manager
        self.metric = metric

    def on_iteration(self, iteration, logs):
        if self.tester.tested_at != iteration:
            return
        values = [e.get(self.metric) for e in self.tester.entries]
        latest, earlier = values[-1], [v for v in values[:-1] if v is not None]
        if latest is not None and all(latest > v for v in earlier):
            self.manager.save(checkpoint_number=iteration)


class StopAtTarget(IterationCallback):
    """Stops training after the test at which every target of `tester` has been reached."""

    def __init__(self, tester):
        super().__init__()
        self.tester = tester
        self.stopped = test_records.all_reached(tester.summary)

    def on_iteration(self, iteration, logs):
        if self.tester.tested_at == iteration and test_records.all_reached(self.tester.summary):
            self.model.stop_training = True
            self.stopped = True


class StopOnSignal(IterationCallback):
    """Stops training after the iteration during which `requests` (a StopRequests) caught
    SIGINT or SIGTERM; the Snapshot after it then checkpoints that iteration."""

    def __init__(self, requests):
        super().__init__()
        self.requests = requests
        self.stopped_at = None

    def on_iteration(self, iteration, logs):
        if self.requests.signal is not None and self.stopped_at is None:
            self.model.stop_training = True
            self.stopped_at = iteration


class StopWhenBehind(keras.callbacks.Callback):
    """Stops fit after a call of `every` iterations (steps_per_execution) that ended off a
    multiple of `every`: loss scaling skipped an update in it, and the next events would miss
    their iterations. Train then catches up one iteration at a time."""

    def __init__(self, every):
        super().__init__()
        self.every = every

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.every:
            self.model.stop_training = True


class Snapshot(IterationCallback):
    """Every `every` iterations (0: never), at `max_iter` and whenever training is about to
    stop: a checkpoint numbered by iteration, with the run's wall time in `wall_time` and the
    batches consumed so far in `position` (where a resumed run's data stream continues)."""

    def __init__(self, manager, every, max_iter, clock, wall_time, position):
        super().__init__()
        self.manager = manager
        self.every = every
        self.max_iter = max_iter
        self.clock = clock
        self.wall_time = wall_time
        self.position = position

    def on_train_batch_begin(self, batch, logs=None):
        self.first_batch = batch

    def on_train_batch_end(self, batch, logs=None):
        # Every batch moves the data, also one whose update loss scaling skipped; one call
        # of fit's (steps_per_execution) runs the batches first_batch..batch.
        self.position.assign_add(batch - self.first_batch + 1)
        super().on_train_batch_end(batch, logs)

    def on_iteration(self, iteration, logs):
        if ((self.every and iteration % self.every == 0) or iteration == self.max_iter
                or self.model.stop_training):
            with self.clock.pause():
                self.wall_time.assign(self.clock.elapsed())
                checkpoints.save(self.manager, iteration)
