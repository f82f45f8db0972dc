"""Compares training runs as the study did: accuracy, iterations to a target, the speedup.

    python -m kerasbn.report runs/baseline runs/bn [--reference=runs/baseline] [--out=report]

Reads each run's metrics.jsonl (runs still in progress too) and flags.txt; prints a table
(terminal and Markdown: network, norm, policy, best and final test top-1, iterations and wall
time to each target, speedup against the reference run, test jump, images/s) and draws test
accuracy against iteration (the study's figure) and against wall time, training loss and
learning rate as PNGs. The speedup is the reference's iterations to the target over the run's
(docs/reference.md section 1: 64k / 45k = 1.4x in the study); ">2.67x" when the reference never
reached the target (the bound uses its last test), "<" when the run never did. The test
jump is the mean absolute change of test top-1 between consecutive tests over the second half
of the run (`metrics.stability`): how much stale BN statistics shake the test curve.

Runs that differ only in their seed (e.g. `launch --seeds=3`) are one configuration: the
table then gives each configuration's mean ± std over its seeds, iterations to a target
censored at the last test for a seed that never reached it (shown as a bound), and speedups
computed per seed (kerasbn.analysis.seeds says how); the accuracy figure draws each configuration's
mean curve with a band of one std. With `--sweep=FLAG,...` (a launcher sweep), a second table
gives each configuration at its best swept value, chosen on the first seed and reported on the
others, with the speedup best-against-best beside the speedup at the reference's best value,
and `iterations_vs_FLAG.png` draws iterations to the first target against the swept value.
"""

import os
import sys

from absl import flags

from kerasbn.analysis import comparison, seeds
from kerasbn.flags import cli
from kerasbn.runs.run_dir import RunDir
from kerasbn.utils import atomic, errors


def main(argv):
    values, run_dirs = cli.parse(argv, define_flags, __doc__)
    if not run_dirs:
        sys.exit("error: give one or more run directories")
    if os.path.exists(values.out) and not os.path.isdir(values.out):
        sys.exit(f"error: --out={values.out} is a file; give a directory for report.md and "
                 "the figures")
    cli.check_writable(values.out)
    cli.run(lambda: write_report(values, run_dirs),
            f"each file in {values.out} is written whole or not at all; rerun the same command")


def write_report(values, run_dirs):
    """report.md and the figures of the runs at `run_dirs` in --out, the table printed."""
    runs = [comparison.load_run(d) for d in run_dirs]
    for run in runs:
        if run["torn"]:
            print(f"note: {RunDir(run['dir']).metrics_jsonl} ends in a torn line (a run still "
                  "writing it, or killed): skipped, its earlier tests are reported")
    wanted = os.path.normpath(values.reference or comparison.default_reference(runs))
    reference = next((r for r in runs if os.path.normpath(r["dir"]) == wanted), None)
    if reference is None:
        reference = comparison.load_run(values.reference)
        runs.append(reference)
    targets = comparison.parse_targets(values.targets) if values.targets \
        else comparison.tracked_targets(runs)
    groups = seeds.group(runs)
    comparison.check_distinct(runs, groups)
    unknown = [flag for flag in values.sweep or [] if flag not in reference["flags"]]
    if unknown:
        raise errors.UserError(f"--sweep={','.join(unknown)}: no such setting in the runs' "
                               "config.json; give the swept flags' names, e.g. --sweep=base_lr")
    os.makedirs(values.out, exist_ok=True)
    figures = []
    if values.sweep or any(len(entry["runs"]) > 1 for entry in groups):
        reference_group = next(g for g in groups if reference in g["runs"])
        table = (comparison.grouped_markdown(groups, targets, reference_group)
                 + comparison.SEEDS_NOTE)
        if values.sweep:
            choices = comparison.sweep_choices(groups, values.sweep, targets[0])
            chosen_reference = next(c for c in choices if reference_group in c["groups"])
            table += "\n" + comparison.sweep_markdown(choices, values.sweep, targets[0],
                                           chosen_reference)
            figures.append(comparison.plot_sweep(choices, values.sweep, targets[0], values.out))
    else:
        table = comparison.markdown(comparison.rows(runs, targets, reference["dir"]),
                                    reference["name"])
    unfinished = [run["dir"] for run in runs if not run["finished"]]
    if unfinished:
        table += (f"\n{len(unfinished)} run(s) marked unfinished have not ended (still "
                  "training, or stopped): their figures are those of their last test.\n")
    atomic.write_text(os.path.join(values.out, "report.md"), table)
    print(table)
    for path in comparison.plot(groups, values.out) + figures:
        print(f"figure: {path}")


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("reference", None, "Run the speedups are against (default: the first "
                        "baseline run, else the first run).", **on)
    flags.DEFINE_list("targets", None, "Targets: test top-1 fractions or METRIC:VALUE "
                      "(default: those the runs tracked with --target_accuracy and --target, "
                      "else 0.8).", **on)
    flags.DEFINE_string("out", "report", "Directory for report.md and the PNGs.", **on)
    flags.DEFINE_list("sweep", None, "Flags a launcher sweep varied (e.g. base_lr): each "
                      "configuration's best value is chosen on the first seed and reported "
                      "on the others.", **on)


if __name__ == "__main__":
    main(sys.argv)
