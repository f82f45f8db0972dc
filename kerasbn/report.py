"""Compares training runs as the study did: accuracy, iterations to a target, the speedup.

    python -m kerasbn.report runs/baseline runs/bn [--reference=runs/baseline] [--out=report]

Reads each run's metrics.jsonl (runs still in progress too) and flags.txt; prints a table
(terminal and Markdown: network, norm, policy, best and final test top-1, iterations and wall
time to each target, speedup against the reference run, test jump, images/s) and draws test
accuracy against iteration (the study's figure) and against wall time, training loss and
learning rate as PNGs. The speedup is the reference's iterations to the target over the run's
(REFERENCE.md section 1: 64k / 45k = 1.4x in the study); ">2.67x" when the reference never
reached the target (the bound uses its last test), "<" when the run never did. The test
jump is the mean absolute change of test top-1 between consecutive tests over the second half
of the run (`metrics.stability`): how much stale BN statistics shake the test curve.
"""

import os
import sys

import numpy as np
from absl import flags

from kerasbn import cli, metrics, train_flags
from kerasbn.config import ConfigError
from kerasbn.run_dir import RunDir, RunDirError
FIGURES = {"accuracy_vs_iteration.png": ("iteration", "test_top1", "test top-1"),
           "accuracy_vs_time.png": ("wall_time", "test_top1", "test top-1"),
           "train_loss.png": ("iteration", "train_loss", "training loss"),
           "learning_rate.png": ("iteration", "lr", "learning rate"),
           "verification_vs_iteration.png": ("iteration", "verify_acc",
                                             "verification accuracy (unseen identities)")}


class ReportError(ValueError):
    """A run directory that cannot be reported; the message names it and the fix."""


def load_run(run_dir):
    """{name, dir, flags, entries} of one run; ReportError when it has no test yet."""
    try:
        entries = RunDir(run_dir).read_metrics()
        settings = train_flags.run_settings(run_dir) if entries else {}
    except (RunDirError, ConfigError) as e:
        raise ReportError(f"{run_dir}: {e}") from None
    if not entries:
        raise ReportError(f"{run_dir} has no metrics.jsonl lines: it is not a kerasbn run "
                          "directory, or its first test has not run yet")
    return {"name": os.path.basename(os.path.normpath(run_dir)), "dir": run_dir,
            "flags": settings,
            "targets": [("test_top1", t) for t in settings.get("target_accuracy") or []]
            + [metrics.parse_target(t) for t in settings.get("target") or []],
            "entries": entries}


def tracked_targets(runs):
    """The targets the runs tracked (--target_accuracy, then --target's), each ascending;
    else top-1 0.8."""
    targets = {t for run in runs for t in run["targets"]} or {("test_top1", 0.8)}
    return sorted(targets, key=metrics.target_order)


def parse_targets(texts):
    """(metric, value) of each --targets item: a top-1 fraction or METRIC:VALUE."""
    targets = []
    for text in texts:
        try:
            targets.append(metrics.parse_target(text))
        except ValueError as e:
            raise ReportError(f"--targets={text}: {str(e).split(': ', 1)[1]}; give top-1 "
                              "fractions such as 0.7,0.8, or METRIC:VALUE") from None
    return targets


def rows(runs, targets, reference):
    """One table row per run; speedups against the run named `reference`."""
    summaries = {run["dir"]: metrics.summarize(run["entries"], targets) for run in runs}
    ref = summaries[reference]["targets"]
    ref_last = summaries[reference]["final_iteration"]
    table = []
    for run in runs:
        summary = summaries[run["dir"]]
        row = {"run": run["name"], "network": run["flags"].get("model", "?"),
               "norm": run["flags"].get("norm", "-") if run["flags"].get("model") != "baseline"
               else "-", "policy": run["flags"].get("lr_policy", "?"),
               "best": summary["best_test_top1"], "final": summary["final_test_top1"],
               "iteration": summary["final_iteration"],
               "jump": metrics.stability(run["entries"]),
               "verify": summary.get("best_verify_acc"),
               "images_per_sec": metrics.median_speed(run["entries"]), "targets": {}}
        for target, hit in summary["targets"].items():
            row["targets"][target] = {
                "iteration": hit and hit["iteration"], "wall_time": hit and hit["wall_time"],
                **_speedup(ref[target], ref_last, hit, summary["final_iteration"])}
        table.append(row)
    return table


def _speedup(base, base_last, hit, last):
    """{speedup, bound}: the reference's iterations to the target over the run's.

    When only one of the two reached the target, its iterations lie beyond the other's last
    test, so the speedup is a bound: `>` when only the run reached it, `<` when only the
    reference did (a run short of the target still says how far ahead or behind it is).
    """
    if hit and base and hit["iteration"]:
        return {"speedup": base["iteration"] / hit["iteration"], "bound": ""}
    if hit and not base and hit["iteration"] and base_last:
        return {"speedup": base_last / hit["iteration"], "bound": ">"}
    if base and not hit and last:
        return {"speedup": base["iteration"] / last, "bound": "<"}
    return {"speedup": None, "bound": ""}


def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


def markdown(table, reference_name):
    targets = list(table[0]["targets"]) if table else []
    head = ["run", "network", "norm", "policy", "best top-1", "final top-1 (iter)"]
    for t in targets:
        head += [f"iters to {t}", f"time to {t}", f"speedup at {t} vs {reference_name}"]
    verified = any(r["verify"] is not None for r in table)
    head += ["test jump", "images/s"] + (["best verify acc"] if verified else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["run"], r["network"], r["norm"], r["policy"], f"{r['best']:.4f}",
                 f"{r['final']:.4f} ({r['iteration']})"]
        for t in targets:
            hit = r["targets"][t]
            cells += [_cell(hit["iteration"], "d"),
                      "-" if hit["wall_time"] is None else f"{hit['wall_time']:.0f}s",
                      "-" if hit["speedup"] is None else f"{hit['bound']}{hit['speedup']:.2f}x"]
        cells += ["-" if np.isnan(r["jump"]) else f"{r['jump']:.3f}",
                  _cell(r["images_per_sec"], ".0f")] + (
            [_cell(r["verify"], ".4f")] if verified else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs, out_dir):
    """Writes the FIGURES whose values some run recorded; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, (x_key, y_key, label) in FIGURES.items():
        if not any(e.get(y_key) is not None for run in runs for e in run["entries"]):
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for run in runs:
            points = [(e[x_key], e[y_key]) for e in run["entries"]
                      if e.get(x_key) is not None and e.get(y_key) is not None]
            if points:
                ax.plot(*zip(*points), marker=".", label=run["name"])
        if y_key == "lr":
            ax.set_yscale("log")
        ax.set_xlabel("wall time (s)" if x_key == "wall_time" else "iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def default_reference(runs):
    """The first baseline run, else the first run."""
    return next((r["dir"] for r in runs if r["flags"].get("model") == "baseline"),
                runs[0]["dir"])


def main(argv):
    values, run_dirs = cli.parse(argv, define_flags, __doc__)
    if not run_dirs:
        sys.exit("error: give one or more run directories")
    try:
        runs = [load_run(d) for d in run_dirs]
        wanted = os.path.normpath(values.reference or default_reference(runs))
        reference = next((r for r in runs if os.path.normpath(r["dir"]) == wanted), None)
        if reference is None:
            reference = load_run(values.reference)
            runs.append(reference)
    except ReportError as e:
        sys.exit(f"error: {e}")
    try:
        targets = parse_targets(values.targets) if values.targets else tracked_targets(runs)
    except ReportError as e:
        sys.exit(f"error: {e}")
    if os.path.exists(values.out) and not os.path.isdir(values.out):
        sys.exit(f"error: --out={values.out} is a file; give a directory for report.md and "
                 "the figures")
    table = markdown(rows(runs, targets, reference["dir"]), reference["name"])
    os.makedirs(values.out, exist_ok=True)
    with open(os.path.join(values.out, "report.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    for path in plot(runs, values.out):
        print(f"figure: {path}")


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("reference", None, "Run the speedups are against (default: the first "
                        "baseline run, else the first run).", **on)
    flags.DEFINE_list("targets", None, "Targets: test top-1 fractions or METRIC:VALUE "
                      "(default: those the runs tracked with --target_accuracy and --target, "
                      "else 0.8).", **on)
    flags.DEFINE_string("out", "report", "Directory for report.md and the PNGs.", **on)


if __name__ == "__main__":
    main(sys.argv)
