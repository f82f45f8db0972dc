"""Trains a network of the study from TFRecord shards, by iterations, as Caffe's solver does.

    python -m kerasbn.train --flagfile=launch/bn.flags --data_dir=data/faces --run_dir=runs/bn

Flags -> strategy -> data -> model -> fit -> export. Rerunning on the same --run_dir resumes
from its newest checkpoint (weights, optimizer state, iteration and so learning rate).
"""

import os
import shutil
import sys

import keras
import tensorflow as tf
from absl import app, logging

from kerasbn import callbacks, checkpoints, export, input as input_lib, metrics, records
from kerasbn import precise_bn, solver
from kerasbn import flags as train_flags

FLAGS = train_flags.FLAGS


def prepare_run_dir(run_dir, overwrite):
    """Refuses a run dir holding a run with other flags (unless overwrite); writes flags.txt."""
    path = train_flags.flags_path(run_dir)
    if os.path.exists(path):
        if overwrite:
            shutil.rmtree(run_dir)
        else:
            changed = train_flags.differences(path)
            if changed:
                name, there, now = changed[0]
                raise train_flags.FlagError(
                    f"--run_dir={run_dir} holds a run with different flags ({len(changed)} "
                    f"differ; --{name}: {there or 'unset'} there, {now or 'unset'} now); rerun "
                    "with its flags (--flagfile=" + path + ") to resume, pass --overwrite to "
                    "start over, or choose another --run_dir")
    os.makedirs(run_dir, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(train_flags.flagfile_text())
    os.replace(path + ".tmp", path)


def make_strategy():
    """MirroredStrategy over several GPUs, otherwise the default (single-device) strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def train(config):
    """Runs (or resumes) the training described by `config` (from `train_flags.resolve`)."""
    run_dir, data_dir = config["run_dir"], config["data_dir"]
    manifest = records.read_manifest(data_dir)
    for split in ("train", "test"):
        input_lib.check_shards(data_dir, manifest, split)
    keras.mixed_precision.set_global_policy(config["precision"])
    keras.utils.set_random_seed(config["seed"])
    strategy = make_strategy()
    with strategy.scope():
        model = solver.build_and_compile(config)
        wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        manager = checkpoints.make_manager(run_dir, model, model.optimizer, wall_time,
                                           config["keep_checkpoints"])
    if manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resuming from {manager.latest_checkpoint}", flush=True)
    elif config["weights"]:
        print(f"initialised from {checkpoints.load_weights(model, config['weights'])}",
              flush=True)
    if config["iter_size"] > 1 and config["model"] != "baseline":
        print(f"warning: --iter_size={config['iter_size']} accumulates gradients, but BN "
              f"statistics still come from each batch of {config['batch_size']} images",
              flush=True)
    start_iter = int(model.optimizer.iterations.numpy())
    metrics.write_metrics(run_dir, [e for e in metrics.read_metrics(run_dir)
                                    if e["iteration"] <= start_iter])

    train_data = input_lib.train_dataset(
        data_dir, manifest, config["batch_size"], seed=config["seed"],
        crop_pad=config["crop_pad"], mirror=config["mirror"], start_step=start_iter)
    test_data = input_lib.test_dataset(data_dir, manifest, config["batch_size"])
    tensorboard = os.path.join(run_dir, "tensorboard")
    writers = (tf.summary.create_file_writer(os.path.join(tensorboard, "train")),
               tf.summary.create_file_writer(os.path.join(tensorboard, "test")))
    # Its own seeded stream, so precise BN never shifts the training data order.
    precise_data = (input_lib.train_dataset(
        data_dir, manifest, config["batch_size"], seed=config["seed"] + 1,
        mirror=config["mirror"], crop_pad=config["crop_pad"], start_step=start_iter)
        if config["precise_bn"] and precise_bn.bn_layers(model) else None)
    events = callbacks.IterationEvents(run_dir, config, metrics.make_test_step(model), test_data,
                                       manager, wall_time, writers, start_iter, precise_data)
    # Loss scaling (mixed_float16) may skip updates, so one fit can end short of max_iter.
    while ((remaining := config["max_iter"] - int(model.optimizer.iterations.numpy())) > 0
           and not events.stopped_at_target):
        model.fit(train_data, epochs=1, steps_per_epoch=remaining * config["iter_size"],
                  callbacks=[events], verbose=0, shuffle=False)
    summary = metrics.summarize(metrics.read_metrics(run_dir), config["target_accuracy"])
    metrics.write_summary(run_dir, summary)
    export_dir = export.export_saved_model(model, manifest,
                                           os.path.join(run_dir, export.EXPORT_NAME))
    return summary, export_dir


def describe(summary, config, export_dir):
    """The end-of-run lines a user reads."""
    if not summary.get("tests"):
        return "no test was run"
    targets = [
        f"target top-1 {target}: " + (f"reached at iteration {hit['iteration']} "
                                      f"({hit['wall_time']:.0f}s)" if hit else "not reached")
        for target, hit in sorted(summary["targets"].items(), key=lambda t: float(t[0]))]
    run_dir = config["run_dir"]
    return "\n".join([
        f"best test top-1 {summary['best_test_top1']:.4f} (iteration "
        f"{summary['best_iteration']}), final {summary['final_test_top1']:.4f} "
        f"(iteration {summary['final_iteration']})",
        *targets,
        f"TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}",
        f"SavedModel: {export_dir}"])


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    for name in ("data_dir", "run_dir"):
        if not FLAGS[name].value:
            sys.exit(f"error: --{name} is required")
    try:
        manifest = records.read_manifest(FLAGS.data_dir)
        config = train_flags.resolve(manifest, FLAGS.data_dir)
        prepare_run_dir(config["run_dir"], config["overwrite"])
        summary, export_dir = train(config)
    except (records.DataError, train_flags.FlagError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    print(describe(summary, config, export_dir), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=train_flags.parse_argv)
