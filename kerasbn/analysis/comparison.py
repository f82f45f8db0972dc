"""Runs compared as the study did (the tables and figures of `python -m kerasbn.report` and of
a launcher's set): each run's records loaded, iterations to each target and the speedup
against a reference, configurations over seeds, a swept value chosen on the first seed, and
the curves drawn as PNGs. The report command's docstring describes each figure."""

import math
import os

import numpy as np

from kerasbn import config
from kerasbn.analysis import charts, seeds
from kerasbn.config import ConfigError
from kerasbn.evaluation import target_metrics
from kerasbn.runs import test_records
from kerasbn.runs.run_dir import RunDir, RunDirError, run_settings
from kerasbn.utils import errors

FIGURES = {"accuracy_vs_iteration.png": ("iteration", "test_top1", "test top-1"),
           "accuracy_vs_time.png": ("wall_time", "test_top1", "test top-1"),
           "train_loss.png": ("iteration", "train_loss", "training loss"),
           "learning_rate.png": ("iteration", "lr", "learning rate"),
           "verification_vs_iteration.png": ("iteration", "verify_acc",
                                             "verification accuracy (unseen identities)")}


class ReportError(errors.UserError):
    """A run directory that cannot be reported; the message names it and the fix."""


def load_run(run_dir):
    """{name, dir, finished, torn, flags, targets, entries} of one run (`torn`: its
    metrics.jsonl's torn last line was skipped); ReportError when it has no test yet."""
    try:
        entries = RunDir(run_dir).read_metrics()
        settings = run_settings(run_dir) if entries else {}
    except (RunDirError, ConfigError) as e:
        raise ReportError(f"{run_dir}: {e}") from None
    if not entries:
        raise ReportError(f"{run_dir} has no metrics.jsonl lines: it is not a kerasbn run "
                          "directory, or its first test has not run yet")
    for number, entry in enumerate(entries, start=1):
        for key, value in entry.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ReportError(f"{RunDir(run_dir).metrics_jsonl}:{number} records {key} "
                                  f"{value} at iteration {entry.get('iteration')}; a run whose "
                                  "figures are not finite cannot be averaged or compared, "
                                  "leave it out")
    return {"name": os.path.basename(os.path.normpath(run_dir)), "dir": run_dir,
            "finished": RunDir(run_dir).finished(), "torn": RunDir(run_dir).metrics_torn(),
            "pruned": RunDir(run_dir).read_summary().get("pruned"),
            "flags": settings,
            "targets": [("test_top1", t) for t in settings.get("target_accuracy") or []]
            + [target_metrics.parse_target(t) for t in settings.get("target") or []],
            "entries": entries}


def check_distinct(runs, groups):
    """ReportError when one run is given twice, or two runs are the same configuration and
    seed: either would count one measurement as two seeds."""
    seen = {}
    for run in runs:
        real = os.path.realpath(run["dir"])
        if real in seen:
            raise ReportError(f"{run['dir']} is given twice (as {seen[real]} too); a run "
                              "counts once")
        seen[real] = run["dir"]
    for entry in groups:
        by_seed = {}
        for run in entry["runs"]:
            seed = seeds.seed_of(run)
            if seed in by_seed:
                raise ReportError(f"{by_seed[seed]} and {run['dir']} are the same configuration "
                                  f"with the same seed {seed}: one measurement, not two seeds; "
                                  "give one of them")
            by_seed[seed] = run["dir"]


def tracked_targets(runs):
    """The targets the runs tracked (--target_accuracy, then --target's), each ascending;
    else top-1 0.8. A target on a metric no run recorded (verification on a dataset without
    a holdout split) is left out: it was never measured, not missed."""
    recorded = {key for run in runs for entry in run["entries"] for key, value in entry.items()
                if value is not None}
    targets = {t for run in runs for t in run["targets"] if t[0] in recorded} or {
        ("test_top1", 0.8)}
    return sorted(targets, key=target_metrics.target_order)


def parse_targets(texts):
    """(metric, value) of each --targets item: a top-1 fraction or METRIC:VALUE."""
    targets = []
    for text in texts:
        try:
            targets.append(target_metrics.parse_target(text))
        except ValueError as e:
            raise ReportError(f"--targets={text}: {str(e).split(': ', 1)[1]}; give top-1 "
                              "fractions such as 0.7,0.8, or METRIC:VALUE") from None
    return targets


def rows(runs, targets, reference):
    """One table row per run; speedups against the run named `reference`."""
    summaries = {run["dir"]: test_records.summarize(run["entries"], targets) for run in runs}
    ref = summaries[reference]["targets"]
    ref_last = summaries[reference]["final_iteration"]
    table = []
    for run in runs:
        summary = summaries[run["dir"]]
        head = run["flags"].get("head", "softmax")
        flags = run["flags"]
        row = {"run": run["name"] + _unfinished(run),
               "network": config.network_name(flags.get("model", "?"), flags.get("backbone"))
               + ("" if head == "softmax" else f" + {head}"),
               "norm": "-" if flags.get("model") == "baseline" or flags.get("backbone")
               else flags.get("norm", "-"), "policy": flags.get("lr_policy", "?"),
               "best": summary["best_test_top1"], "final": summary["final_test_top1"],
               "iteration": summary["final_iteration"],
               "jump": test_records.stability(run["entries"]),
               "verify": summary.get("best_verify_acc"),
               "images_per_sec": test_records.median_speed(run["entries"]), "targets": {}}
        for target, hit in summary["targets"].items():
            row["targets"][target] = {
                "iteration": hit and hit["iteration"], "wall_time": hit and hit["wall_time"],
                **_speedup(ref[target], ref_last, hit, summary["final_iteration"],
                           _first_update_test(run["entries"]))}
        table.append(row)
    return table


def _unfinished(run):
    """What a run's name says after it when it did not finish."""
    if run["finished"]:
        return ""
    pruned = run.get("pruned")
    return f" (pruned at {pruned['iteration']})" if pruned else " (unfinished)"


def _first_update_test(entries):
    """The first tested iteration after iteration 0, or None."""
    return next((e["iteration"] for e in entries if e["iteration"] > 0), None)


def _speedup(base, base_last, hit, last, first_test=None):
    """{speedup, bound}: the reference's iterations to the target over the run's.

    When only one of the two reached the target, its iterations lie beyond the other's last
    test, so the speedup is a bound: `>` when only the run reached it, `<` when only the
    reference did (a run short of the target still says how far ahead or behind it is).
    A run that met the target at its iteration-0 test is `>` the reference's iterations over
    its first later test (`first_test`), or 1.0 when the reference met it there too.
    """
    if hit and hit["iteration"] == 0:
        if base and base["iteration"] == 0:
            return {"speedup": 1.0, "bound": ""}
        reference = base["iteration"] if base else base_last
        if reference and first_test:
            return {"speedup": reference / first_test, "bound": ">"}
        return {"speedup": None, "bound": ""}
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


def spread_cell(mean_std, fmt=".4f"):
    """A (mean, std) pair as a table cell, `-` without a mean."""
    mean, std = mean_std
    return "-" if mean is None else f"{mean:{fmt}} ± {std:{fmt}}"


def _iterations_cell(count):
    """Iterations to a target over seeds; a mean holding censored seeds is a lower bound."""
    if count["mean"] is None:
        return "-"
    cell = f"{count['mean']:.0f} ± {count['std']:.0f}"
    if count["censored"]:
        cell = f">={cell} ({count['censored']}/{count['seeds']} never reached)"
    return cell


def _speedup_cell(result):
    if result["mean"] is None:
        return "-"
    return (f"{result['bound']}{result['mean']:.2f}x ± {result['std']:.2f} "
            f"({result['seeds']} seeds)")


SEEDS_NOTE = ("\nMean ± std over seeds. Speedup: per seed, the reference's iterations to the "
              "target over the configuration's (same seed), then mean ± std; `>=`: some "
              "seeds never reached the target and count at their last test, so the mean is "
              "a lower bound; a speedup with `>` or `<` is a bound for the same reason.\n")


# The verification figures of a group's last tests, where its runs verified.
VERIFICATION = [("verify acc", "verify_acc"), ("AUC", "verify_auc"),
                ("TAR@FAR=1e-3", "verify_tar@far=0.001"), ("TAR@FAR=1e-2", "verify_tar@far=0.01")]


def grouped_markdown(groups, targets, reference):
    """One row per configuration: mean ± std over its seeds; speedups against the
    configuration `reference` (a group), per seed."""
    names = [target_metrics.target_name(t) for t in targets]
    head = ["configuration", "seeds", "best top-1", "final top-1"]
    for name in names:
        head += [f"iters to {name}", f"speedup at {name} vs {reference['name']}"]
    verified = [(f"final {name}", key) for name, key in VERIFICATION
                if any(seeds.final_verification(e["runs"], key)[0] is not None for e in groups)]
    head += [name for name, _ in verified]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in groups:
        runs = entry["runs"]
        unfinished = sum(not run["finished"] for run in runs)
        cells = [entry["name"] + (f" ({unfinished} unfinished)" if unfinished else ""),
                 str(len(runs)),
                 spread_cell(seeds.accuracy(runs, "best_test_top1")),
                 spread_cell(seeds.accuracy(runs, "final_test_top1"))]
        for target in targets:
            cells += [_iterations_cell(seeds.to_target(runs, target)),
                      _speedup_cell(seeds.speedup(reference["runs"], runs, target))]
        cells += [spread_cell(seeds.final_verification(runs, key)) for _, key in verified]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_choices(groups, swept, target):
    """[{configuration, groups, best, seed}]: the groups of each configuration (every
    setting but the seed and the swept flags), the best of them on the first seed."""
    configurations = {}
    for entry in groups:
        key = seeds.configuration(entry["runs"][0]["flags"], leave_out=swept)
        configurations.setdefault(key, []).append(entry)
    choices = []
    for members in configurations.values():
        best, seed = seeds.pick_on_first_seed(members, target)
        name = members[0]["name"]
        for flag in swept:
            name = name.replace(f"-{flag}{_value(members[0], flag)}", "")
        choices.append({"configuration": name, "groups": members, "best": best, "seed": seed})
    return choices


def _value(entry, flag):
    return entry["runs"][0]["flags"].get(flag)


def _at_value(choice, values):
    return next((g for g in choice["groups"]
                 if [_value(g, f) for f in values] == list(values.values())), None)


def sweep_markdown(choices, swept, target, reference):
    """Each configuration at its best swept value, chosen on the first seed and reported on
    the others; speedups best-against-best and at the reference's best value."""
    name = target_metrics.target_name(target)
    ref_best = reference["best"]
    ref_values = {flag: _value(ref_best, flag) for flag in swept}
    shown_ref = ", ".join(f"{k}={v}" for k, v in ref_values.items())
    head = ["configuration", "best value", "chosen on seed", "reported seeds",
            f"iters to {name}", "final top-1", f"speedup best vs best ({reference['configuration']})",
            f"speedup at {shown_ref}"]
    lines = [f"Each configuration at its best {', '.join(swept)} (fewest iterations to {name} "
             "on the first seed, ties by final top-1), reported on the other seeds:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref_runs = seeds.without_seed(ref_best["runs"], reference["seed"])
    for choice in choices:
        runs = seeds.without_seed(choice["best"]["runs"], choice["seed"])
        equal = _at_value(choice, ref_values)
        at_equal = (seeds.speedup(ref_runs, seeds.without_seed(equal["runs"], choice["seed"]),
                                  target) if equal else None)
        cells = [choice["configuration"],
                 ", ".join(f"{flag}={_value(choice['best'], flag)}" for flag in swept),
                 str(choice["seed"]), str(len(runs)),
                 _iterations_cell(seeds.to_target(runs, target)),
                 spread_cell(seeds.accuracy(runs, "final_test_top1")) if runs else "-",
                 _speedup_cell(seeds.speedup(ref_runs, runs, target)),
                 _speedup_cell(at_equal) if at_equal else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(choices, swept, target, out_dir):
    """iterations_vs_FLAG.png: mean iterations to `target` over every seed against the first
    swept flag, one line per configuration (and value of any other swept flag)."""
    flag, others = swept[0], swept[1:]
    curves, values = [], []
    for choice in choices:
        lines = {}
        for entry in choice["groups"]:
            label = choice["configuration"] + "".join(
                f", {f}={_value(entry, f)}" for f in others)
            count = seeds.to_target(entry["runs"], target)
            lines.setdefault(label, []).append((float(_value(entry, flag)), count["mean"]))
            values.append(float(_value(entry, flag)))
        for label, points in lines.items():
            curves.append((label, *zip(*sorted(points))))
    positive = values and min(values) > 0
    scale = "log" if positive and max(values) / min(values) >= 10 else "linear"
    path = os.path.join(out_dir, f"iterations_vs_{flag}.png")
    charts.save_lines(curves, path, flag,
                      f"iterations to {target_metrics.target_name(target)} (mean over seeds)",
                      xscale=scale, marker="o")
    return path


def plot(groups, out_dir):
    """Writes the FIGURES whose values some run recorded; returns their paths. A
    configuration of several seeds is drawn as its mean over them against iteration, with a
    band of one std (on the iterations every seed tested), and run by run against wall time."""
    paths = []
    everything = [e for entry in groups for run in entry["runs"] for e in run["entries"]]
    for name, (x_key, y_key, label) in FIGURES.items():
        if not any(e.get(y_key) is not None for e in everything):
            continue
        curves = [curve for index, entry in enumerate(groups)
                  for curve in _group_curves(entry, x_key, y_key, f"C{index % 10}")]
        path = os.path.join(out_dir, name)
        charts.save_lines(curves, path, "wall time (s)" if x_key == "wall_time" else "iteration",
                          label, yscale="log" if y_key == "lr" else "linear")
        paths.append(path)
    return paths


def _group_curves(entry, x_key, y_key, color):
    """A configuration's curves of `y_key` against `x_key`: its one run, its runs one by one
    (against wall time), or their mean with a band of one std (against iteration)."""
    runs = [[(e[x_key], e[y_key]) for e in run["entries"]
             if e.get(x_key) is not None and e.get(y_key) is not None]
            for run in entry["runs"]]
    runs = [run for run in runs if run]
    if len(runs) == 1 or (runs and x_key != "iteration"):
        return [(entry["name"] if k == 0 else None, *zip(*run),
                 {"color": color, "alpha": 1 if len(runs) == 1 else 0.6,
                  "marker": "." if len(runs) == 1 else None})
                for k, run in enumerate(runs)]
    if not runs:
        return []
    shared = sorted(set.intersection(*(set(x for x, _ in run) for run in runs)))
    table = np.array([[dict(run)[x] for x in shared] for run in runs])
    mean, std = table.mean(0), table.std(0, ddof=1)
    return [(f"{entry['name']} (mean of {len(runs)} seeds)", shared, mean,
             {"color": color, "band": (mean - std, mean + std)})]


def default_reference(runs):
    """The first baseline run, else the first run."""
    return next((r["dir"] for r in runs if r["flags"].get("model") == "baseline"),
                runs[0]["dir"])
