"""Iteration-based training events, as Caffe's solver has them: display, test, snapshot.

Keras counts epochs; this callback counts the optimizer's iterations (finished weight
updates), so tests, logging and checkpoints land on the same iterations after a resume.
"""

import math
import time

import keras
import tensorflow as tf

from kerasbn import metrics, precise_bn
from kerasbn.progress import format_seconds


class IterationEvents(keras.callbacks.Callback):
    """Every `display` iterations: a progress line and TensorBoard scalars (loss, lr, images/s).
    Every `test_interval` iterations and at the end: a test, a metrics.jsonl line,
    summary.json and TensorBoard. Every `snapshot` iterations and at the end: a checkpoint.
    Stops the run on a non-finite loss, naming the iteration.
    """

    def __init__(self, run_dir, config, test_fn, test_data, manager, wall_time, writers,
                 start_iter, precise_data=None):
        super().__init__()
        self.run_dir = run_dir
        self.config = config
        self.test_fn = test_fn
        self.test_data = test_data
        self.precise_batches = iter(precise_data) if precise_data is not None else None
        self.manager = manager
        self.wall_time = wall_time
        self.train_writer, self.test_writer = writers
        self.start_iter = start_iter
        self.wall_offset = float(wall_time.numpy())
        self.entries = metrics.read_metrics(run_dir)
        self.last_iteration = start_iter
        targets = metrics.summarize(self.entries, config["target_accuracy"]).get("targets", {})
        # A rerun of a run that already stopped at its targets has nothing left to do.
        self.stopped_at_target = bool(config["stop_at_target"] and targets
                                      and all(targets.values()))
        self.start = None
        self.train_loss = None
        self.images_per_sec = None

    def _elapsed(self):
        return self.wall_offset + time.perf_counter() - self.start

    def on_train_begin(self, logs=None):
        if self.start is not None:
            return
        self.start = time.perf_counter()
        self.window_start = self.start
        self.window_iter = self.start_iter
        self.paused = 0.0
        if self.start_iter == 0 and self.config["test_initialization"]:
            self._test(0)

    def on_train_batch_end(self, batch, logs=None):
        iteration = int(self.model.optimizer.iterations.numpy())
        if iteration == self.last_iteration:
            return  # mixed_float16 skipped the update (non-finite gradients): not an iteration
        self.last_iteration = iteration
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            self.model.stop_training = True
            raise FloatingPointError(
                f"the training loss became {loss} at iteration {iteration}; lower --base_lr "
                "or resume from the last checkpoint")
        config = self.config
        if iteration % config["display"] == 0 or iteration == config["max_iter"]:
            self._display(iteration, loss)
            self.model.reset_metrics()
        if iteration % config["test_interval"] == 0 or iteration == config["max_iter"]:
            self._pause(self._test, iteration)
        if ((config["snapshot"] and iteration % config["snapshot"] == 0)
                or iteration == config["max_iter"] or self.stopped_at_target):
            self._pause(self._snapshot, iteration)
        if iteration >= config["max_iter"]:
            self.model.stop_training = True

    def _pause(self, fn, iteration):
        """Runs fn(iteration) and keeps its time out of the training images/s."""
        start = time.perf_counter()
        fn(iteration)
        self.paused += time.perf_counter() - start

    def _display(self, iteration, loss):
        now = time.perf_counter()
        steps = iteration - self.window_iter
        seconds = max(now - self.window_start - self.paused, 1e-9)
        self.images_per_sec = (steps * self.config["batch_size"] * self.config["iter_size"]
                               / seconds)
        self.train_loss = loss
        self.window_start, self.window_iter, self.paused = now, iteration, 0.0
        lr = self.current_lr()
        done = iteration - self.start_iter
        eta = (self.config["max_iter"] - iteration) * (now - self.start) / max(done, 1)
        print(f"iter {iteration}/{self.config['max_iter']}  loss {loss:.4f}  lr {lr:.3g}  "
              f"{self.images_per_sec:.0f} images/s  ETA {format_seconds(eta)}", flush=True)
        with self.train_writer.as_default(step=iteration):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("images_per_sec", self.images_per_sec)

    def current_lr(self):
        optimizer = self.model.optimizer
        return float(f"{float(keras.ops.convert_to_numpy(optimizer.learning_rate)):.8g}")

    def _test(self, iteration):
        if self.precise_batches is not None:
            precise_bn.recompute(self.model, self.precise_batches, self.config["precise_bn"])
        result = metrics.evaluate(self.test_fn, self.test_data, self.config["test_iter"])
        entry = {"iteration": iteration, "wall_time": round(self._elapsed(), 3),
                 "lr": self.current_lr(), "train_loss": self.train_loss,
                 "test_loss": result["loss"], "test_top1": result["top1"],
                 "test_top5": result["top5"], "images_per_sec": self.images_per_sec}
        self.entries = [e for e in self.entries if e["iteration"] < iteration] + [entry]
        metrics.append_metrics(self.run_dir, entry)
        summary = metrics.summarize(self.entries, self.config["target_accuracy"])
        metrics.write_summary(self.run_dir, summary)
        reached = {t: hit for t, hit in summary["targets"].items() if hit}
        for target, hit in reached.items():
            if hit["iteration"] == iteration:
                print(f"target top-1 {target} reached at iteration {iteration} "
                      f"({hit['wall_time']:.0f}s)", flush=True)
                with self.test_writer.as_default(step=iteration):
                    tf.summary.scalar(f"iterations_to_{target}", iteration)
                    tf.summary.scalar(f"seconds_to_{target}", hit["wall_time"])
        if self.config["stop_at_target"] and len(reached) == len(summary["targets"]):
            self.model.stop_training = True
            self.stopped_at_target = True
        print(f"test  iter {iteration}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}"
              f"  loss {result['loss']:.4f}  ({result['count']} images)", flush=True)
        with self.test_writer.as_default(step=iteration):
            tf.summary.scalar("loss", result["loss"])
            tf.summary.scalar("top1", result["top1"])
            tf.summary.scalar("top5", result["top5"])
        self.test_writer.flush()
        self.train_writer.flush()

    def _snapshot(self, iteration):
        self.wall_time.assign(self._elapsed())
        self.manager.save(checkpoint_number=iteration)

