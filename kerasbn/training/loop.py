"""The training loop: a run's data checked, its runtime and state set up, its events built,
then `fit` until max_iter and the export (`start` holds the run dir's lock around it all).

Each step is one function, called in order by `train`; the Keras workarounds it needs live in
`keras_compat`.
"""

import dataclasses
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf

# disable_op_determinism has no public name; tf.config.experimental re-exports this module's.
from tensorflow.python.framework import config as tf_config

from kerasbn import config as config_lib
from kerasbn.data import checks, pipeline, records
from kerasbn.evaluation import accuracy, bin_sets, holdout
from kerasbn.nn import keras_compat, precise_bn, registry
from kerasbn.nn.sharded import centres
from kerasbn.runs import checkpoints, network, test_records
from kerasbn.runs.run_dir import RunDir, RunDirError
from kerasbn.serving import exporter
from kerasbn.training import callbacks, runtime
from kerasbn.utils import errors, stop_signals


def start(config, flagfile_text, overwrite=False, stored=None, strategy=None):
    """Trains (or resumes) the run of `config` in its run dir, holding the run's lock.

    `stored` is the run dir's own config when it holds a run (`run_dir.stored_config`);
    a different one is refused unless `overwrite`, which deletes only the run's files.
    Under a multi-worker `strategy`, a worker other than the chief trains in a scratch copy
    of the run's checkpoints and metrics (so it resumes where the chief does), removed at the
    end: only the chief writes the run. Returns (summary, export dir).
    """
    if strategy is not None and not runtime.is_chief(strategy):
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
                kept = run.clear()
                if kept:
                    print(f"--overwrite: kept {len(kept)} file(s) kerasbn did not write in "
                          f"{run.path}: {', '.join(kept[:5])}" + (" ..." if len(kept) > 5
                                                                  else ""), flush=True)
            else:
                run.check_same_run(config, stored)
        run.write_settings(config, flagfile_text)
        try:
            return train(config, run, strategy)
        except errors.UserError:
            if (stored is None or overwrite) and not run.read_metrics():
                # Refused before its first test: no run was started here, so a rerun with
                # other settings is not told that this one is in the way.
                run.forget_settings()
            raise


def train(config, run, strategy=None):
    """Runs (or resumes) the training of `config` in RunDir `run` (locked by the caller),
    under `strategy` (default: the one config.strategy names). Returns (summary, export)."""
    manifest = records.read_manifest(config.data_dir)
    readable = check_data(config, manifest)
    strategy = start_runtime(config, run, strategy)
    state = build_state(config, run, strategy)
    entries = run.keep_metrics_until(state.start_iter if state.start_iter else -1)
    evaluate, verifies = make_evaluation(config, state.model, manifest, readable, entries)
    events = build_events(config, run, state, evaluate, entries, verifies)
    fit(config, state, events, strategy, manifest, readable)
    return finish(config, run, state, events, manifest)


def check_data(config, manifest):
    """{split: records readable} of the training and test splits, checked once before
    training; with --skip_corrupt_records what was lost is said."""
    readable = {}
    for split in ("train", "test"):
        readable[split], lost = checks.check_split(config.data_dir, manifest, split,
                                                   config.skip_corrupt_records)
        for path, count in lost.items():
            print(f"warning: --skip_corrupt_records: {path} is short by {count} record(s) "
                  "(corrupt or truncated); training goes on without them", flush=True)
    return readable


def start_runtime(config, run, strategy):
    """Precision, seed, determinism and the strategy of the run, said in its first lines."""
    keras.mixed_precision.set_global_policy(config.precision)
    keras.utils.set_random_seed(config.seed)
    norm = ("" if config.model == "baseline" and not config.backbone else
            ", its own BN" if config.backbone else f", norm {config.norm}")
    head = "" if config.head == "softmax" else f" + {config.head}"
    if registry.HEADS[config.head].margins:
        head += f" (margins {','.join(f'{m:g}' for m in config.margins)})"
    print(f"{run.path}: {config_lib.network_name(config.model, config.backbone)}{head}{norm}, "
          f"{config.precision}, seed {config.seed}, "
          f"{config.max_iter} iterations of {config.batch_size} at base_lr "
          f"{config.schedule.base_lr:g} ({config.schedule.lr_policy})", flush=True)
    # Set both ways: a run started after a deterministic one in the same process (compare_norms,
    # a notebook) would otherwise inherit determinism, and with it lose XLA.
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()
    checkpoints.remove_partial(run)
    strategy = strategy or runtime.make_strategy(config.strategy)
    distribution = runtime.describe_distribution(config, strategy)
    run.record_distribution(distribution)
    if distribution["replicas"] > 1:
        statistics = ("synchronised across replicas" if config.norm == "sync" else
                      "computed per replica (--norm=sync synchronises them)")
        bn = "" if config.model == "baseline" else f"; BN statistics {statistics}"
        print(f"{distribution['strategy']}: {distribution['replicas']} replicas of "
              f"{distribution['per_replica_batch']} images per global batch of "
              f"{config.batch_size}{bn}", flush=True)
    return strategy


@dataclasses.dataclass
class State:
    """What a checkpoint holds and restores: the compiled model, the run's wall time, the
    position in the training stream, the checkpoint manager; and the iteration it starts at."""

    model: keras.Model
    wall_time: tf.Variable
    position: tf.Variable
    manager: tf.train.CheckpointManager
    start_iter: int

    def iterations(self):
        return int(self.model.optimizer.iterations.numpy())


def build_state(config, run, strategy):
    """The compiled network under `strategy`, resumed from the newest checkpoint, or
    initialised from --weights, or new."""
    with strategy.scope():
        model = network.build_and_compile(config)
        wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        position = tf.Variable(-1, dtype=tf.int64, trainable=False)
        manager = checkpoints.make_manager(run, model, wall_time, position,
                                           config.keep_checkpoints)
    if registry.HEADS[config.head].samples:
        _describe_centres(config, model, strategy.num_replicas_in_sync)
    if manager.latest_checkpoint:
        print(f"resuming from {checkpoints.restore(manager)}", flush=True)
    elif config.weights:
        print(f"initialised from {checkpoints.load_weights(model, config.weights)}",
              flush=True)
    if config.iter_size > 1 and config.model != "baseline":
        print(f"warning: --iter_size={config.iter_size} accumulates gradients, but BN "
              f"statistics still come from each batch of {config.batch_size} images",
              flush=True)
    start_iter = int(model.optimizer.iterations.numpy())
    if int(position.numpy()) < 0:  # a new run, or a checkpoint from before positions
        position.assign(start_iter * config.iter_size)
    return State(model, wall_time, position, manager, start_iter)


def _describe_centres(config, model, replicas):
    """Says what the margin head's centres and a step's logits cost each replica."""
    dim = model.get_layer(registry.CLASSIFIER).input.shape[-1]
    shards = replicas if config.shard_classes else 1
    batch = config.batch_size if config.shard_classes else config.batch_size // replicas
    weights, logits = centres.footprint(config.num_classes, dim, shards, batch,
                                        config.sample_classes, config.momentum > 0)
    where = f"sharded over {replicas} replicas" if config.shard_classes else \
        "the whole matrix on each replica" if replicas > 1 else "on one device"
    print(f"centres: {config.num_classes} x {dim}, {where}: {weights / 2**20:.1f} MiB per "
          f"replica with their momentum; logits {logits / 2**20:.1f} MiB per step",
          flush=True)


def make_evaluation(config, model, manifest, readable, entries):
    """(evaluate(iteration) -> the test's figures, whether it verifies): the test split's
    figures at every test, holdout and .bin verification at every --verify_interval, precise
    BN recomputed first when asked."""
    test_data = pipeline.test_dataset(config.data_dir, manifest, config.batch_size,
                                      skip_corrupt=config.skip_corrupt_records)
    test_step = accuracy.make_test_step(model)
    # Its own seeded stream, so precise BN never shifts the training data order; each test
    # so far has taken precise_bn batches of it.
    precise_batches = iter(pipeline.train_dataset(
        config.data_dir, manifest, config.batch_size, seed=config.seed + 1,
        mirror=config.mirror, crop_pad=config.crop_pad,
        start_step=len(entries) * config.precise_bn, **_stream(config, readable))) \
        if config.precise_bn and precise_bn.bn_layers(model) else None
    verify = make_verifier(config, model, manifest)
    verify_sets = make_set_verifiers(config, model, manifest)
    every = config.verify_interval or config.test_interval

    def evaluate(iteration):
        if precise_batches is not None:
            precise_bn.recompute(model, precise_batches, config.precise_bn)
        start = time.perf_counter()
        result = accuracy.evaluate(test_step, test_data, config.test_iter)
        result["seconds"] = time.perf_counter() - start
        if not config.test_iter and result["count"] != readable["test"]:
            raise records.DataError(f"a pass over the test split read {result['count']} "
                                    f"records where {readable['test']} were checked at the "
                                    f"start: the shards of {config.data_dir} changed during "
                                    "the run")
        if (verify or verify_sets) and (iteration % every == 0 or iteration == config.max_iter):
            start = time.perf_counter()
            if verify:
                result.update(verify())
            result["sets"] = {name: verify_set() for name, verify_set in verify_sets.items()}
            result["verify_seconds"] = time.perf_counter() - start
        return result

    return evaluate, verify is not None


def _stream(config, readable):
    """The training stream's reading settings: one pass holds the records checked readable."""
    return {"skip_corrupt": config.skip_corrupt_records, "epoch_records": readable["train"]}


def _augment(config):
    return {"seed": config.seed, "crop_pad": config.crop_pad, "mirror": config.mirror}


@dataclasses.dataclass
class Events:
    """The fit's callbacks in order, and those the loop and the end read."""

    callbacks: list
    progress: callbacks.ProgressDisplay
    stop: callbacks.StopAtTarget | None
    on_signal: callbacks.StopOnSignal
    requests: stop_signals.StopRequests
    tester: callbacks.PeriodicTest
    clock: callbacks.Clock


def build_events(config, run, state, evaluate, entries, verifies):
    """The training events (README's Training events), each with one job, in the order
    `fit` calls them."""
    clock = callbacks.Clock(float(state.wall_time.numpy()))
    train_writer = tf.summary.create_file_writer(os.path.join(run.tensorboard, "train"))
    test_writer = tf.summary.create_file_writer(os.path.join(run.tensorboard, "test"))
    progress = callbacks.ProgressDisplay(config.display, config.max_iter,
                                         config.batch_size * config.iter_size, clock,
                                         train_writer, state.start_iter)
    tester = callbacks.PeriodicTest(run, evaluate, config.test_interval, config.max_iter,
                                    config.targets(), clock, progress, test_writer, entries)
    requests = stop_signals.StopRequests()
    on_signal = callbacks.StopOnSignal(requests)
    best_metric = "verify_acc" if verifies else "test_top1"
    events = [callbacks.NanGuard(), progress, tester, callbacks.BestCheckpoint(
        tester, checkpoints.make_best_manager(run, state.model), best_metric)]
    stop = callbacks.StopAtTarget(tester) if config.stop_at_target else None
    events += ([stop] if stop else []) + [on_signal]
    events.append(callbacks.Snapshot(state.manager, config.snapshot, config.max_iter, clock,
                                     state.wall_time, state.position))
    tester.set_model(state.model)
    return Events(events, progress, stop, on_signal, requests, tester, clock)


def fit(config, state, events, strategy, manifest, readable):
    """Fits until max_iter, a target (--stop_at_target) or a signal; the test at iteration 0
    first. Loss scaling (mixed_float16) may skip updates, so one fit can end short of
    max_iter: each fit's stream starts at the saved position."""
    model = state.model
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    worker_data = worker_batches(strategy, config, manifest, int(state.position.numpy()),
                                 _stream(config, readable), _augment(config)) \
        if multi_worker else None
    with events.requests:
        if state.start_iter == 0 and config.test_initialization:
            with events.clock.pause():
                events.tester.test(0)
        while ((remaining := config.max_iter - state.iterations()) > 0
               and not (events.stop and events.stop.stopped)
               and events.on_signal.stopped_at is None):
            frozen = state.iterations() < config.freeze_backbone_iter
            keras_compat.freeze_backbone(model, frozen)
            if frozen:
                remaining = min(remaining, config.freeze_backbone_iter - state.iterations())
            # An update skipped by loss scaling leaves a call of steps_per_execution short of
            # its iterations; single ones up to the next multiple put the events back.
            behind = state.iterations() % config.steps_per_execution
            per_call = 1 if behind else config.steps_per_execution
            if behind:
                remaining = config.steps_per_execution - behind
            keras_compat.set_steps_per_execution(model, per_call * config.iter_size)
            calls = events.callbacks + ([callbacks.StopWhenBehind(per_call)]
                                        if per_call > 1 else [])
            if multi_worker:
                keras_compat.replicated_fit(model, strategy, worker_data,
                                            remaining * config.iter_size, events.callbacks)
            else:
                # A dataset restarts at its start step in every fit: start it where the
                # data stands now.
                model.fit(pipeline.train_dataset(
                    config.data_dir, manifest, config.batch_size,
                    start_step=int(state.position.numpy()), **_augment(config),
                    **_stream(config, readable)),
                    epochs=1, steps_per_epoch=remaining * config.iter_size,
                    callbacks=calls, verbose=0, shuffle=False)
        keras_compat.freeze_backbone(model, False)


def finish(config, run, state, events, manifest):
    """The run's summary and export, summary.json's `finished` written last (so a run killed
    in its export is not taken as finished); a signal raises `stop_signals.Stopped`."""
    if events.on_signal.stopped_at is not None:
        raise stop_signals.Stopped(events.requests.signal, events.on_signal.stopped_at)
    summary = test_records.summarize(run.read_metrics(), config.targets())
    summary["train_images_per_sec"] = events.progress.steady_images_per_sec()
    if config.export == "best":
        checkpoints.restore_latest(run, state.model, best=True)
    exporter.export_saved_model(network.servable(config, state.model), manifest, run.export,
                                config.data_dir)
    run.write_summary({**summary, "finished": True})
    return summary, run.export


def worker_batches(strategy, config, manifest, start_step, stream, augment):
    """An iterator over this worker's share of each global batch under a multi-worker
    strategy: its own shards when there are at least as many as workers, else every Nth
    record of the one stream (said once)."""
    workers = keras_compat.num_workers(strategy)
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


def make_verifier(config, model, manifest):
    """The holdout verification `config.verify_split` asks for, or None (`auto`: when the
    dataset has holdout pairs; `config.resolve` refused `holdout` without them)."""
    if config.verify_split == "none" or not manifest.has_holdout_pairs:
        return None
    return holdout.verifier(model, config.data_dir, manifest, config.batch_size,
                                 config.flip())


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
                                    config.flip())
            for name, path in zip(names, config.verify_bin)}
