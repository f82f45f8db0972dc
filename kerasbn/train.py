"""Trains a network of the study from TFRecord shards, by iterations, as Caffe's solver does.

    python -m kerasbn.train --flagfile=launch/bn.flags --data_dir=data/faces --run_dir=runs/bn

Flags -> RunConfig -> run dir (locked) -> data -> model -> fit -> export. Rerunning on the
same --run_dir resumes from its newest checkpoint (weights, optimizer state, iteration and so
learning rate).
"""

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time

import keras
import tensorflow as tf

from kerasbn import config as config_lib
from kerasbn import export
from kerasbn.data import pipeline, records
from kerasbn.evaluation import bin_sets, holdout
from kerasbn.flags import cli, train_flags
from kerasbn.nn import models
from kerasbn.training import callbacks, checkpoints, metrics, optimizers, precise_bn, schedules
from kerasbn.training.run_dir import RunDir, RunDirBusy, RunDirError, stored_config
from kerasbn.utils import stop_signals

# What a training command reports as one line; anything else is a bug and keeps its traceback.
# The exit status of a run refused because another process trains in its run dir, so a
# launcher moves on to the next run (EX_TEMPFAIL).
BUSY_EXIT = 75
ERRORS = (records.DataError, config_lib.ConfigError, schedules.ScheduleError, RunDirError,
          FloatingPointError)


def make_strategy(name="auto"):
    """The tf.distribute strategy `name` (config.STRATEGIES) asks for on this machine."""
    if name == "multi_worker":
        # Before anything lists logical devices, which starts TensorFlow's runtime.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        # TensorFlow's default strategy: one device, and no distribution machinery at all.
        return tf.distribute.get_strategy()
    # mirrored: logical CPU devices stand in for GPUs on a machine without any (trials, tests).
    return tf.distribute.MirroredStrategy(
        gpus or [d.name for d in tf.config.list_logical_devices("CPU")])


def split_cpu(devices):
    """Splits the CPU into `devices` logical devices; only possible before TensorFlow's
    runtime starts, so the command does it first."""
    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


def describe_distribution(config, strategy):
    """{strategy, replicas, per_replica_batch} of the run under `strategy`, after checking
    that the global batch splits evenly; printed at start and kept in config.json."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise config_lib.ConfigError(
            f"--batch_size={config.batch_size} (the global batch) does not split evenly over "
            f"{replicas} replicas; give a multiple of {replicas}")
    kind = "OneDevice" if replicas == 1 and config.strategy != "multi_worker" else \
        type(strategy).__name__
    return {"strategy": kind, "replicas": replicas,
            "per_replica_batch": config.batch_size // replicas}


def is_chief(strategy):
    """Whether this process writes the run: always, but under a multi-worker strategy only
    the chief (task `chief`, else worker 0) does."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None \
            or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def start(config, flagfile_text, overwrite=False, stored=None, strategy=None):
    """Trains (or resumes) the run of `config` in its run dir, holding the run's lock.

    `stored` is the run dir's own config when it holds a run (`run_dir.stored_config`);
    a different one is refused unless `overwrite`, which deletes only the run's files.
    Under a multi-worker `strategy`, a worker other than the chief trains in a scratch copy
    of the run's checkpoints and metrics (so it resumes where the chief does), removed at the
    end: only the chief writes the run. Returns (summary, export dir).
    """
    if strategy is not None and not is_chief(strategy):
        with tempfile.TemporaryDirectory(prefix="kerasbn-worker-") as scratch:
            chief = RunDir(config.run_dir)
            if os.path.isdir(chief.checkpoints):
                shutil.copytree(chief.checkpoints, RunDir(scratch).checkpoints)
            if os.path.isfile(chief.metrics_jsonl):
                shutil.copy(chief.metrics_jsonl, RunDir(scratch).metrics_jsonl)
            worker = dataclasses.replace(config, run_dir=scratch)
            with RunDir(scratch).lock() as run:
                run.write_settings(worker, flagfile_text)
                return train(worker, run, strategy)
    run = RunDir(config.run_dir)
    data, where = os.path.realpath(config.data_dir), os.path.realpath(config.run_dir)
    if data == where or data.startswith(where + os.sep):
        raise RunDirError(f"--run_dir={config.run_dir} holds the dataset --data_dir="
                          f"{config.data_dir}; a run dir must not contain its data, choose "
                          "another --run_dir")
    with run.lock():
        if stored is not None:
            if overwrite:
                run.clear()
            else:
                run.check_same_run(config, stored)
        run.write_settings(config, flagfile_text)
        return train(config, run, strategy)


def train(config, run, strategy=None):
    """Runs (or resumes) the training of `config` in RunDir `run` (locked by the caller),
    under `strategy` (default: the one config.strategy names)."""
    data_dir = config.data_dir
    manifest = records.read_manifest(data_dir)
    readable = {}
    for split in ("train", "test"):
        readable[split], lost = pipeline.verify_split(data_dir, manifest, split,
                                                      config.skip_corrupt_records)
        for path, count in lost.items():
            print(f"warning: --skip_corrupt_records: {path} is short by {count} record(s) "
                  "(corrupt or truncated); training goes on without them", flush=True)
    keras.mixed_precision.set_global_policy(config.precision)
    keras.utils.set_random_seed(config.seed)
    norm = "" if config.model == "baseline" else f", norm {config.norm}"
    print(f"{run.path}: {config.model}{norm}, {config.precision}, seed {config.seed}, "
          f"{config.max_iter} iterations of {config.batch_size} at base_lr "
          f"{config.schedule.base_lr:g} ({config.schedule.lr_policy})", flush=True)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    checkpoints.remove_partial(run)
    strategy = strategy or make_strategy(config.strategy)
    distribution = describe_distribution(config, strategy)
    run.record_distribution(distribution)
    if distribution["replicas"] > 1:
        statistics = ("synchronised across replicas" if config.norm == "sync" else
                      "computed per replica (--norm=sync synchronises them)")
        bn = "" if config.model == "baseline" else f"; BN statistics {statistics}"
        print(f"{distribution['strategy']}: {distribution['replicas']} replicas of "
              f"{distribution['per_replica_batch']} images per global batch of "
              f"{config.batch_size}{bn}", flush=True)
    with strategy.scope():
        model = optimizers.build_and_compile(config)
        wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        position = tf.Variable(-1, dtype=tf.int64, trainable=False)
        manager = checkpoints.make_manager(run, model, wall_time, position,
                                           config.keep_checkpoints)
    if manager.latest_checkpoint:
        print(f"resuming from {checkpoints.restore(manager)}", flush=True)
    elif config.weights:
        donor = lambda classes: models.build(**{**config.model_kwargs(), "num_classes": classes})
        print(f"initialised from {checkpoints.load_weights(model, config.weights, donor)}",
              flush=True)
    if config.iter_size > 1 and config.model != "baseline":
        print(f"warning: --iter_size={config.iter_size} accumulates gradients, but BN "
              f"statistics still come from each batch of {config.batch_size} images",
              flush=True)
    iterations = lambda: int(model.optimizer.iterations.numpy())
    start_iter = iterations()
    if int(position.numpy()) < 0:  # a new run, or a checkpoint from before positions
        position.assign(start_iter * config.iter_size)
    # A run killed before its first checkpoint starts again at 0 and tests there again.
    entries = run.keep_metrics_until(start_iter if start_iter else -1)

    # One pass over the training shards holds the records checked readable above.
    stream = {"skip_corrupt": config.skip_corrupt_records, "epoch_records": readable["train"]}
    augment = {"seed": config.seed, "crop_pad": config.crop_pad, "mirror": config.mirror}
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    worker_data = worker_batches(strategy, config, manifest, int(position.numpy()), stream,
                                 augment) if multi_worker else None
    test_data = pipeline.test_dataset(data_dir, manifest, config.batch_size,
                                      skip_corrupt=config.skip_corrupt_records)
    test_step = metrics.make_test_step(model)
    # Its own seeded stream, so precise BN never shifts the training data order; each test
    # so far has taken precise_bn batches of it.
    precise_batches = iter(pipeline.train_dataset(
        data_dir, manifest, config.batch_size, seed=config.seed + 1, mirror=config.mirror,
        crop_pad=config.crop_pad, start_step=len(entries) * config.precise_bn, **stream)) \
        if config.precise_bn and precise_bn.bn_layers(model) else None

    verify = make_verifier(config, model, manifest)
    verify_sets = make_set_verifiers(config, model, manifest)

    def evaluate(iteration):
        if precise_batches is not None:
            precise_bn.recompute(model, precise_batches, config.precise_bn)
        start = time.perf_counter()
        result = metrics.evaluate(test_step, test_data, config.test_iter)
        result["seconds"] = time.perf_counter() - start
        if not config.test_iter and result["count"] != readable["test"]:
            raise records.DataError(f"a pass over the test split read {result['count']} "
                                    f"records where {readable['test']} were checked at the "
                                    f"start: the shards of {data_dir} changed during the run")
        every = config.verify_interval or config.test_interval
        if (verify or verify_sets) and (iteration % every == 0 or iteration == config.max_iter):
            start = time.perf_counter()
            if verify:
                result.update(verify())
            result["sets"] = {name: verify_set() for name, verify_set in verify_sets.items()}
            result["verify_seconds"] = time.perf_counter() - start
        return result

    clock = callbacks.Clock(float(wall_time.numpy()))
    train_writer = tf.summary.create_file_writer(os.path.join(run.tensorboard, "train"))
    test_writer = tf.summary.create_file_writer(os.path.join(run.tensorboard, "test"))
    progress = callbacks.ProgressDisplay(config.display, config.max_iter,
                                         config.batch_size * config.iter_size, clock,
                                         train_writer, start_iter)
    tester = callbacks.PeriodicTest(run, evaluate, config.test_interval, config.max_iter,
                                    config.targets(), clock, progress, test_writer,
                                    entries)
    requests = stop_signals.StopRequests()
    on_signal = callbacks.StopOnSignal(requests)
    best_metric = "verify_acc" if verify else "test_top1"
    events = [callbacks.NanGuard(), progress, tester, callbacks.BestCheckpoint(
        tester, checkpoints.make_best_manager(run, model), best_metric)]
    stop = callbacks.StopAtTarget(tester) if config.stop_at_target else None
    events += ([stop] if stop else []) + [on_signal]
    events.append(callbacks.Snapshot(manager, config.snapshot, config.max_iter, clock,
                                     wall_time, position))
    tester.set_model(model)
    with requests:
        if start_iter == 0 and config.test_initialization:
            with clock.pause():
                tester.test(0)
        # Loss scaling (mixed_float16) may skip updates, so one fit can end short of max_iter.
        while ((remaining := config.max_iter - iterations()) > 0
               and not (stop and stop.stopped) and on_signal.stopped_at is None):
            frozen = iterations() < config.freeze_backbone_iter
            freeze_backbone(model, frozen)
            if frozen:
                remaining = min(remaining, config.freeze_backbone_iter - iterations())
            # An update skipped by loss scaling leaves a call of steps_per_execution short of
            # its iterations; single ones up to the next multiple put the events back.
            behind = iterations() % config.steps_per_execution
            per_call = 1 if behind else config.steps_per_execution
            if behind:
                remaining = config.steps_per_execution - behind
            set_steps_per_execution(model, per_call * config.iter_size)
            calls = events + ([callbacks.StopWhenBehind(per_call)] if per_call > 1 else [])
            if multi_worker:
                replicated_fit(model, strategy, worker_data, remaining * config.iter_size,
                               events)
            else:
                # A dataset restarts at its start step in every fit: start it where the
                # data stands now.
                model.fit(pipeline.train_dataset(data_dir, manifest, config.batch_size,
                                                  start_step=int(position.numpy()), **augment,
                                                  **stream),
                          epochs=1, steps_per_epoch=remaining * config.iter_size,
                          callbacks=calls, verbose=0, shuffle=False)
        freeze_backbone(model, False)
    if on_signal.stopped_at is not None:
        raise stop_signals.Stopped(requests.signal, on_signal.stopped_at)
    summary = metrics.summarize(run.read_metrics(), config.targets())
    summary["train_images_per_sec"] = progress.steady_images_per_sec()
    if config.export == "best":
        checkpoints.restore_latest(run, model, best=True)
    export_dir = export.export_saved_model(model, manifest, run.export, data_dir)
    # Last, so a run killed in its export is not taken as finished.
    run.write_summary({**summary, "finished": True})
    return summary, export_dir


def worker_batches(strategy, config, manifest, start_step, stream, augment):
    """An iterator over this worker's share of each global batch under a multi-worker
    strategy: its own shards when there are at least as many as workers, else every Nth
    record of the one stream (said once)."""
    workers = strategy.extended._num_workers  # noqa: SLF001 (no public count in TF 2.21)
    if pipeline.shards_by_record(manifest, workers):
        print(f"warning: {config.data_dir} has fewer training shards than the {workers} "
              f"workers, so each reads every shard and keeps one record in {workers}; "
              "rebuild it with a smaller --shard_size so each reads its own", flush=True)
    else:
        stream = {**stream, "epoch_records": None}

    def dataset(context):
        return pipeline.train_dataset(
            config.data_dir, manifest, context.get_per_replica_batch_size(config.batch_size),
            input_context=context, start_step=start_step, **augment, **stream)

    return iter(strategy.distribute_datasets_from_function(dataset))


def replicated_fit(model, strategy, batches, steps, events):
    """`model.fit` for a multi-worker strategy: Keras 3.15's fit fails under
    MultiWorkerMirroredStrategy (BUILD.md says why), so this runs Keras's own train_step on
    every replica through strategy.run and calls the same callbacks fit would, batch by
    batch, so every iteration event (test, display, snapshot, targets, NaN guard) is the
    same."""
    if getattr(model, "_replicated_step", None) is None:
        @tf.function
        def step(iterator):
            logs = strategy.run(model.train_step, args=(next(iterator),))
            return {name: strategy.reduce("MEAN", value, axis=None)
                    for name, value in logs.items()}
        model._replicated_step = step
    events = keras.callbacks.CallbackList(events, model=model)
    model.stop_training = False
    events.on_train_begin()
    for batch in range(steps):
        events.on_train_batch_begin(batch)
        logs = model._replicated_step(batches)
        events.on_train_batch_end(batch, {name: float(v) for name, v in logs.items()})
        if model.stop_training:
            break
    events.on_train_end()


def set_steps_per_execution(model, steps):
    """Keras's steps_per_execution of the compiled `model`. The train function of each count
    is kept (until freeze_backbone changes what trains), so a catch-up after a skipped update
    and the return to N reuse their traces instead of tracing again."""
    if model.steps_per_execution == steps:
        return
    functions = model.__dict__.setdefault("_train_functions", {})
    functions[model.steps_per_execution] = model.train_function
    model.steps_per_execution = steps
    model.train_function = functions.get(steps)
    if model.train_function is None:
        model.make_train_function()


def freeze_backbone(model, frozen):
    """Trains only the classifier (`frozen`) or every layer. Frozen BN layers use their
    moving statistics, as Keras does for any BN layer that is not trainable."""
    if all(layer.trainable != frozen for layer in model.layers
           if layer.name != models.CLASSIFIER):
        return
    for layer in model.layers:
        if layer.name != models.CLASSIFIER:
            layer.trainable = not frozen
    model.make_train_function(force=True)
    model._replicated_step = None
    model.__dict__.pop("_train_functions", None)


def make_verifier(config, model, manifest):
    """The holdout verification `config.verify_split` asks for, or None (`auto`: when the
    dataset has holdout pairs)."""
    if config.verify_split == "none" or (config.verify_split == "auto"
                                         and not holdout.available(manifest)):
        return None
    if not holdout.available(manifest):
        raise records.DataError(f"--verify_split=holdout but {config.data_dir} has no holdout "
                                "pairs; rebuild it with --holdout_identities and --pairs, or "
                                "drop the flag")
    return holdout.make_verifier(model, config.data_dir, manifest, config.batch_size,
                                 config.verify_flip)


def make_set_verifiers(config, model, manifest):
    """{set name: verifier} of the run's --verify_bin sets, named by their files (lfw.bin:
    lfw), each name once and none the name of a split."""
    names = [bin_sets.name(path) for path in config.verify_bin]
    clash = sorted({n for n in names if names.count(n) > 1 or n in ("test", "train", "verify")})
    if clash:
        raise config_lib.ConfigError(
            f"--verify_bin: the sets are named by their files, and {', '.join(clash)} is taken "
            "(twice, or by a recorded metric); rename the file")
    return {name: bin_sets.verifier(model, path, manifest, config.batch_size,
                                    config.verify_flip)
            for name, path in zip(names, config.verify_bin)}


def describe(summary, run_dir, export_dir):
    """The end-of-run lines a user reads."""
    if not summary.get("tests"):
        return "no test was run"
    targets = [
        f"target {metrics.shown_target(target)}: "
        + (f"reached at iteration {hit['iteration']} ({hit['wall_time']:.0f}s)" if hit
           else "not reached")
        for target, hit in sorted(summary["targets"].items(),
                                  key=lambda item: metrics.target_order(
                                      metrics.parse_target(item[0])))]
    return "\n".join([
        f"best test top-1 {summary['best_test_top1']:.4f} (iteration "
        f"{summary['best_iteration']}), final {summary['final_test_top1']:.4f} "
        f"(iteration {summary['final_iteration']})",
        *targets,
        *([f"training: {summary['train_images_per_sec']:.0f} images/s from the end of its "
           "first iteration, tests and checkpoints excluded"]
          if summary.get("train_images_per_sec") else []),
        f"TensorBoard: tensorboard --logdir {RunDir(run_dir).tensorboard}",
        f"SavedModel: {export_dir}"])


def main(argv):
    values, rest = cli.parse(argv, train_flags.define, __doc__)
    if rest:
        sys.exit(f"error: unexpected arguments {rest}; every setting is a --flag")
    for name in ("data_dir", "run_dir"):
        if not values[name].value:
            sys.exit(f"error: --{name} is required")
    split_cpu(values.cpu_devices)
    # MultiWorkerMirroredStrategy configures collective ops, which must happen before
    # TensorFlow's runtime starts: first thing, before any data is read.
    strategy = make_strategy("multi_worker") if values.strategy == "multi_worker" else None
    try:
        manifest = records.read_manifest(values.data_dir)
        config = train_flags.to_config(values, manifest)
        run = RunDir(config.run_dir)
        stored = stored_config(config.run_dir, manifest) if run.holds_run() \
            else None
        summary, export_dir = start(config, train_flags.flagfile_text(values),
                                    values.overwrite, stored, strategy)
    except RunDirBusy as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(BUSY_EXIT)
    except ERRORS as e:
        sys.exit(f"error: {e}")
    except stop_signals.Stopped as e:
        print(f"stopped by {signal.Signals(e.signum).name} after iteration {e.iteration}, "
              f"checkpointed in {RunDir(config.run_dir).checkpoints}; rerun the same command "
              "to resume", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    print(describe(summary, config.run_dir, export_dir), flush=True)


if __name__ == "__main__":
    main(sys.argv)
