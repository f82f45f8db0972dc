"""Trains one network with each BN implementation, same data, iterations and seeds, and
compares them as the study compared Caffe's three: accuracy, iterations to the target,
stability of the test curve ("jumps"), and training step time.

    python -m kerasbn.compare_norms --flagfile=launch/compare_norms.flags      # the demonstration
    python -m kerasbn.compare_norms --flagfile=launch/quickstart/bn.flags --data_dir=data/att \
        --norms=keras,nvidia --seeds=3 --out=runs/att_norms

Runs go to OUT/NORM/seedS (a rerun resumes or skips finished runs); the table goes to
OUT/compare_norms.md and the test curves to OUT/compare_norms.png.

Each implementation runs with its own BN momentum and epsilon (docs/reference.md section 3)
unless --bn_momentum/--bn_epsilon are given. In a run shorter than the study's 420,000
iterations, those whose running statistics start at zero and are read uncorrected (keras,
renorm, sync, windows, nvidia) have their averaging window scaled with the run as the schedule
is (norms.scaled_momentum; e.g. nvidia's 0.999 becomes 0.9 at 240 iterations), and the
command says so; the study's length is 420,000 iterations, or --schedule_iters when given (the
length a flagfile such as compare_norms_cifar10.flags was written for); bvlc (which divides by
its scale factor) and nvidia_caffe (which copies the first batch) keep theirs.
"""

import dataclasses
import os
import sys

from absl import flags

from kerasbn.analysis import charts, comparison, seeds
from kerasbn.data import records
from kerasbn.evaluation import target_metrics
from kerasbn.flags import cli, train_flags
from kerasbn.nn import norms
from kerasbn.optim import schedules
from kerasbn.runs import test_records
from kerasbn.runs.run_dir import RunDir, stored_config
from kerasbn.training import loop
from kerasbn.utils import atomic, errors, stop_signals


def momentum_for(config, norm):
    """(BN momentum for `norm`, why): --bn_momentum when given, else the implementation's own,
    its window scaled for a run shorter than the study's (norms.scaled_momentum)."""
    if config.bn_momentum is not None:
        return config.bn_momentum, "--bn_momentum"
    written_for = config.schedule.schedule_iters or schedules.STUDY_MAX_ITER
    own = norms.DEFAULTS[norm][0]
    momentum = norms.scaled_momentum(norm, config.max_iter, written_for)
    if momentum == own:
        return own, "its own"
    return momentum, (f"its own {own:g} (a {1 / (1 - own):.0f}-iteration window) scaled to "
                      f"{config.max_iter} of {written_for} iterations")


def run_one(config, norm, seed, out):
    """Trains (or resumes) `config` with `norm` and `seed` in OUT/NORM/seedS; returns its
    test records."""
    run = RunDir(os.path.join(out, norm, f"seed{seed}"))
    momentum, _ = momentum_for(config, norm)
    config = dataclasses.replace(config, norm=norm, seed=seed, run_dir=run.path,
                                 bn_momentum=momentum)
    base = os.path.abspath(os.path.join(out, "flags.txt"))
    flagfile = (f"--flagfile={base}\n--norm={norm}\n--seed={seed}\n"
                f"--run_dir={run.path}\n" + (f"--bn_momentum={momentum}\n" if momentum else ""))
    stored = stored_config(run.path) if run.holds_run() else None
    if stored is not None and run.finished():
        run.check_same_run(config, stored)
        return run.read_metrics()
    try:
        loop.start(config, flagfile, stored=stored)
    except FloatingPointError as e:
        print(f"{norm} seed {seed} diverged: {e}", flush=True)
    return run.read_metrics()


def summarize(runs, targets):
    """One row per implementation from {norm: [metrics entries per seed]}: mean and sample std
    over seeds (kerasbn.analysis.seeds' rules, as the report's), iterations to each of
    `targets` ((metric, value) pairs) with a seed that never reached it counted at its last
    test (so the mean is then a lower bound)."""
    rows = []
    keras_speed = _speed(runs.get("keras", []))
    for norm, entries in runs.items():
        tested = [{"entries": e} for e in entries if e]
        jumps = [test_records.stability(e) for e in entries if len(e) > 2]
        speed = _speed(entries)
        rows.append({
            "norm": norm, "seeds": len(entries),
            "final": seeds.accuracy(tested, "final_test_top1"),
            "best": seeds.accuracy(tested, "best_test_top1"),
            "to_targets": [seeds.to_target(tested, target) for target in targets],
            "stability": seeds.spread(jumps),
            "step_time_vs_keras": keras_speed / speed if speed and keras_speed else None,
        })
    return rows


def _speed(runs):
    return test_records.median_speed([e for entries in runs for e in entries])


def markdown(rows, targets):
    names = [target_metrics.target_name(t) for t in targets]
    lines = ["| norm | final top-1 | best top-1 | "
             + "".join(f"iterations to {n} | reached {n} | " for n in names)
             + "test jump (mean abs change) | step time / keras |",
             "|---|---|---|" + "---|---|" * len(names) + "---|---|"]
    for r in rows:
        ratio = f"{r['step_time_vs_keras']:.2f}" if r["step_time_vs_keras"] else "-"
        reached = "".join(
            f"{'>=' if reach['censored'] else ''}"
            f"{comparison.spread_cell((reach['mean'], reach['std']), '.0f')} | "
            f"{reach['seeds'] - reach['censored']}/{reach['seeds']} | "
            for reach in r["to_targets"])
        lines.append(
            f"| {r['norm']} | {comparison.spread_cell(r['final'], '.3f')} | "
            f"{comparison.spread_cell(r['best'], '.3f')} | {reached}"
            f"{comparison.spread_cell(r['stability'], '.3f')} | {ratio} |")
    return "\n".join(lines) + "\n"


def plot(runs, out):
    """Test top-1 against iteration, every seed, one colour per implementation."""
    curves = [(norm if k == 0 else None, [e["iteration"] for e in entries],
               [e["test_top1"] for e in entries], {"color": f"C{index % 10}", "alpha": 0.8})
              for index, (norm, runs_of_norm) in enumerate(runs.items())
              for k, entries in enumerate(runs_of_norm)]
    charts.save_lines(curves, out, "iteration", "test top-1", ylim=(0, 1))


def define_flags(values):
    train_flags.define(values)
    on = {"flag_values": values}
    flags.DEFINE_list("norms", list(norms.NORMS), "Implementations to compare.",
                      **on)
    flags.DEFINE_integer("seeds", 2, "Seeds per implementation (0 .. seeds-1).",
                         lower_bound=1, **on)
    flags.DEFINE_string("out", "runs/compare_norms", "Directory for the runs and the report.",
                        **on)


def main(argv):
    values, rest = cli.parse(argv, define_flags, __doc__)
    if rest:
        sys.exit(f"error: unexpected arguments {rest}; every setting is a --flag")
    unknown = [n for n in values.norms if n not in norms.NORMS]
    if unknown or not values.data_dir:
        sys.exit(f"error: --norms takes {', '.join(norms.NORMS)} (got {unknown}); "
                 "--data_dir is required")
    out = values.out
    cli.check_writable(out, by_tensorflow=True)
    os.makedirs(out, exist_ok=True)
    runs = {}
    try:
        config = train_flags.to_config(values, records.read_manifest(values.data_dir))
        atomic.write_text(os.path.join(out, "flags.txt"), train_flags.flagfile_text(values))
        for norm in values.norms:
            momentum, why = momentum_for(config, norm)
            if momentum is not None:
                print(f"{norm}: BN momentum {momentum:g} ({why})", flush=True)
            runs[norm] = [run_one(config, norm, seed, out) for seed in range(values.seeds)]
    except (errors.UserError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except (KeyboardInterrupt, stop_signals.Stopped):
        print(f"interrupted: the finished runs under {out} are kept and a stopped one resumes "
              "from its last checkpoint; rerun the same command to go on", file=sys.stderr)
        sys.exit(130)
    targets = config.targets()
    table = markdown(summarize(runs, targets), targets)
    atomic.write_text(os.path.join(out, "compare_norms.md"), table)
    plot(runs, os.path.join(out, "compare_norms.png"))
    print(table)
    print(f"table: {os.path.join(out, 'compare_norms.md')}  curves: "
          f"{os.path.join(out, 'compare_norms.png')}")


if __name__ == "__main__":
    main(sys.argv)
