"""`bench --bench=run`: a whole training run's images/s against its step's, same run.

    python -m kerasbn.bench --bench=run --run_flags=launch/quickstart/bn.flags --batches=200

Each round trains the flagfile's configuration for --batches iterations with
`python -m kerasbn.train` in a process of its own (tested once at the end, no snapshots) and
reads the rate it reports (from the end of its first iteration, tests excluded), then times
the same network, classes, batch, precision, norm and compilation with
`bench --bench=train`: on one cached batch (the step alone) and on the dataset's input
pipeline without callbacks. The run at under 0.9x the cached batch loses time outside the
step: in the pipeline (the second figure says so) or in the run's own per-iteration work.
"""

import json
import os
import tempfile

from kerasbn.benchmarks import subprocesses, timing
from kerasbn.runs.run_dir import RunDir


def train_rate(run_flags, data_dir, iterations, run_dir):
    """(the RunConfig, images/s) of a run of `run_flags` for `iterations` in `run_dir`."""
    command = ["-m", "kerasbn.train", f"--flagfile={run_flags}",
               f"--run_dir={run_dir}", "--overwrite", f"--max_iter={iterations}",
               f"--test_interval={iterations}", f"--display={iterations}", "--snapshot=0",
               "--test_initialization=false", "--verify_split=none"]
    command += [f"--data_dir={data_dir}"] if data_dir else []
    subprocesses.run(command, "the training run")
    run = RunDir(run_dir)
    with open(run.summary_json, encoding="utf-8") as f:
        return run.read_config(), json.load(f)["train_images_per_sec"]


def run(run_flags, data_dir, iterations, rounds):
    """Per round {"run", "cached", "pipeline"} images/s; prints each round and the ratios."""
    measured = []
    with tempfile.TemporaryDirectory(prefix="kerasbn_bench_run_") as work:
        for round_index in range(1, rounds + 1):
            config, rate = train_rate(run_flags, data_dir, iterations,
                                      os.path.join(work, "run"))
            variant = (config.precision, config.norm, config.jit_compile,
                       config.steps_per_execution)
            step = timing.bench_train(config.model, config.num_classes, [variant],
                                          config.batch_size, iterations, 1,
                                          config.data_dir)[variant]
            measured.append({"run": rate, **step})
            print(f"round {round_index}: {config.model} --norm={config.norm}, "
                  f"{config.precision}, batch {config.batch_size}, {config.num_classes} "
                  f"classes: run {rate:.0f} images/s, step on one cached batch "
                  f"{step['cached']:.0f} ({rate / step['cached']:.2f}x), step on the input "
                  f"pipeline {step['pipeline']:.0f} ({rate / step['pipeline']:.2f}x)",
                  flush=True)
    ratios = [m["run"] / m["cached"] for m in measured]
    verdict = ("0.9x and over: the run keeps up with its step" if min(ratios) >= 0.9
               else "under 0.9x: time goes outside the step")
    print(f"run/cached step over {rounds} round(s): {min(ratios):.2f}-{max(ratios):.2f}x "
          f"({verdict})", flush=True)
    return measured
