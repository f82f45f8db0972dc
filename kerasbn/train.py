"""Trains a network of the study from TFRecord shards, by iterations, as Caffe's solver does.

    python -m kerasbn.train --flagfile=launch/bn.flags --data_dir=data/faces --run_dir=runs/bn

Flags -> RunConfig -> run dir (locked) -> data -> model -> fit -> export. Rerunning on the
same --run_dir resumes from its newest checkpoint (weights, optimizer state, iteration and so
learning rate).
"""

import signal
import sys

from kerasbn.data import records
from kerasbn.evaluation import target_metrics
from kerasbn.flags import cli, train_flags
from kerasbn.runs.run_dir import BUSY_EXIT, DIVERGED_EXIT, RunDir, RunDirBusy, stored_config
from kerasbn.training import loop, runtime
from kerasbn.utils import errors, stop_signals, writable


def describe(summary, run_dir, export_dir):
    """The end-of-run lines a user reads."""
    if not summary.get("tests"):
        return "no test was run"
    targets = [
        f"target {target_metrics.shown_target(target)}: "
        + (f"reached at iteration {hit['iteration']} ({hit['wall_time']:.0f}s)" if hit
           else "not reached")
        for target, hit in sorted(summary["targets"].items(),
                                  key=lambda item: target_metrics.target_order(
                                      target_metrics.parse_target(item[0])))]
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


def given_on_the_command_line(argv, name):
    """The values of flag `name` written on the command line itself (not in a flagfile)."""
    given = []
    for i, token in enumerate(argv):
        if token.startswith(f"--{name}="):
            given.append(token.split("=", 1)[1])
        elif token == f"--{name}" and i + 1 < len(argv):
            given.append(argv[i + 1])
    return given


def unmeasurable_targets(targets, explicit, manifest, verify_split):
    """(the targets to keep, those a flagfile set that this dataset cannot measure): a
    verification target without holdout pairs to verify on. One given on the command line
    is kept, so the config refuses it in one line."""
    verifies = verify_split != "none" and manifest.has_holdout_pairs
    skipped = [t for t in targets if t not in explicit and not verifies
               and target_metrics.parse_target(t)[0].startswith("verify_")]
    return [t for t in targets if t not in skipped], skipped


def main(argv):
    values, rest = cli.parse(argv, train_flags.define, __doc__)
    if rest:
        sys.exit(f"error: unexpected arguments {rest}; every setting is a --flag")
    for name in ("data_dir", "run_dir"):
        if not values[name].value:
            sys.exit(f"error: --{name} is required")
    cli.run(lambda: writable.check_utf8(values.data_dir, "data_dir"), "nothing was written")
    cli.check_writable(values.run_dir, "run_dir", by_tensorflow=True)
    runtime.split_cpu(values.cpu_devices)
    # MultiWorkerMirroredStrategy configures collective ops, which must happen before
    # TensorFlow's runtime starts: first thing, before any data is read.
    strategy = runtime.make_strategy("multi_worker") if values.strategy == "multi_worker" \
        else None
    try:
        manifest = records.read_manifest(values.data_dir)
        kept, skipped = unmeasurable_targets(values.target, given_on_the_command_line(
            argv, "target"), manifest, values.verify_split)
        for target in skipped:
            print(f"note: --target={target} (from a flagfile) is skipped: {values.data_dir} "
                  "has no holdout pairs to verify on", flush=True)
        values["target"].value = kept
        config = train_flags.to_config(values, manifest)
        if config.num_epoch:
            count = manifest.splits["train"].count
            print(f"--num_epoch={config.num_epoch}: {config.max_iter} iterations, warm-up "
                  f"{config.schedule.warmup_iter} ({count} training images // batch "
                  f"{config.batch_size} = {count // config.batch_size} per epoch)", flush=True)
        run = RunDir(config.run_dir)
        stored = stored_config(config.run_dir, manifest) if run.holds_run() \
            else None
        summary, export_dir = loop.start(config, train_flags.flagfile_text(values),
                                    values.overwrite, stored, strategy)
    except RunDirBusy as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(BUSY_EXIT)
    except errors.UserError as e:
        sys.exit(f"error: {e}")
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(DIVERGED_EXIT)
    except stop_signals.Stopped as e:
        print(f"stopped by {signal.Signals(e.signum).name} after iteration {e.iteration}, "
              f"checkpointed in {RunDir(config.run_dir).checkpoints}; rerun the same command "
              "to resume", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        # Ctrl-C before training began, or a second one that stops at once.
        print(f"interrupted: {values.run_dir} keeps its last checkpoint; rerun the same "
              "command to resume",
              file=sys.stderr, flush=True)
        sys.exit(130)
    print(describe(summary, config.run_dir, export_dir), flush=True)


if __name__ == "__main__":
    main(sys.argv)
