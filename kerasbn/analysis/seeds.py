"""Runs of one configuration over several seeds: their spread, censoring, paired speedups and
the choice of a swept value on one seed, reported on the others.

A configuration is every run-defining setting but the seed. Iterations to a target are the
first tested iteration reaching it; a run that never reaches it is censored at its last test
(its max_iter once finished) and counts there, so a mean over seeds that holds a censored run
is a lower bound. A speedup is computed per seed, pairing the two configurations' runs of the
same seed (the same data order and initial draw where the networks allow it): the reference's
iterations over the run's, a bound when either side is censored (">" when only the reference
is, "<" when only the run is; a seed where both are is left out). A run that meets the
target at its iteration-0 test (before any update) stays in: its speedup is unbounded, so it
counts as ">" the reference's iterations over the run's first later test (1.0 when the
reference met it at iteration 0 too). Spreads are the sample standard deviation over seeds
(ddof 1; 0 for a single seed).
"""

import re

import numpy as np

from kerasbn import config
from kerasbn.evaluation import target_metrics
from kerasbn.runs import test_records

# Settings that differ between the seeds of one configuration, or that never change a run.
_NOT_CONFIGURATION = ("seed",) + config.NOT_RUN_DEFINING
_SEED_SUFFIX = re.compile(r"-seed\d+$")


def configuration(settings, leave_out=()):
    """The hashable configuration of a run's `settings` (without seed, run_dir and what
    never changes a run; also without `leave_out`, e.g. the swept flags)."""
    return tuple(sorted((k, repr(v)) for k, v in settings.items()
                        if k not in _NOT_CONFIGURATION and k not in leave_out))


def group(runs):
    """[{name, runs}] of `runs` (report.load_run's dicts) sharing a configuration, in order
    of first appearance, each group's runs by seed; a group is named after its first run,
    less a `-seedN` suffix."""
    groups = {}
    for run in runs:
        key = configuration(run["flags"])
        groups.setdefault(key, {"name": _SEED_SUFFIX.sub("", run["name"]), "runs": []})
        groups[key]["runs"].append(run)
    for entry in groups.values():
        entry["runs"].sort(key=seed_of)
    return list(groups.values())


def seed_of(run):
    return run["flags"].get("seed", 0)


def iterations_to(run, target):
    """(iterations to `target`, censored): the first tested iteration reaching it, else the
    run's last tested iteration, censored."""
    hit = test_records.summarize(run["entries"], [target])["targets"][target_metrics.target_name(target)]
    if hit:
        return hit["iteration"], False
    return run["entries"][-1]["iteration"], True


def spread(values):
    """(mean, sample std) of `values`; std 0 for one value; (None, None) for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def to_target(runs, target):
    """{mean, std, censored (count), seeds} of the iterations to `target` over `runs`."""
    counts = [iterations_to(run, target) for run in runs]
    mean, std = spread([n for n, _ in counts])
    return {"mean": mean, "std": std, "censored": sum(c for _, c in counts),
            "seeds": len(counts)}


def speedup(reference_runs, runs, target):
    """{mean, std, bound, seeds} of the per-seed speedups of `runs` over `reference_runs`
    (the module docstring says how); bound "" (exact), ">", "<" or "~" (bounds both ways)."""
    reference = {seed_of(run): iterations_to(run, target) for run in reference_runs}
    ratios, bounds = [], set()
    for run in runs:
        if seed_of(run) not in reference:
            continue
        (base, base_censored), (mine, censored) = reference[seed_of(run)], iterations_to(
            run, target)
        if base_censored and censored:
            continue
        if mine == 0:
            ratio, bound = _from_the_start(run, base)
        else:
            ratio, bound = base / mine, ">" if base_censored else "<" if censored else ""
        ratios.append(ratio)
        bounds.add(bound)
    mean, std = spread(ratios)
    bounds.discard("")
    bound = bounds.pop() if len(bounds) == 1 else "~" if bounds else ""
    return {"mean": mean, "std": std, "bound": bound, "seeds": len(ratios)}


def _from_the_start(run, base):
    """(ratio, bound) of a run that met the target at its iteration-0 test against a
    reference that took `base` iterations: a lower bound over the run's first later test."""
    if base == 0:
        return 1.0, ""
    later = next((e["iteration"] for e in run["entries"] if e["iteration"] > 0), None)
    return (base / later, ">") if later else (float("inf"), ">")


def accuracy(runs, key):
    """(mean, std) over `runs` of test_records.summarize's `key` (best_test_top1, ...)."""
    return spread([test_records.summarize(run["entries"], [])[key] for run in runs])


def final_verification(runs, key):
    """(mean, std) over `runs` of the figure `key` (verify_acc, verify_auc, ...) of each
    run's last verification; runs that never verified, or whose figure is unresolved, are
    left out."""
    finals = [test_records.summarize(run["entries"], []).get("final_verify", {}) for run in runs]
    return spread([final.get(key) for final in finals])


def pick_on_first_seed(groups, target):
    """The group of `groups` (one configuration at several swept values) best on its first
    seed: fewest iterations to `target` (a censored count ranks behind every reached one),
    ties broken by the higher final top-1. Returns (group, the seed it was chosen on)."""
    first = min(seed_of(g["runs"][0]) for g in groups)

    def rank(entry):
        run = next((r for r in entry["runs"] if seed_of(r) == first), None)
        if run is None:
            return (True, float("inf"), 0.0)
        iterations, censored = iterations_to(run, target)
        return (censored, iterations, -run["entries"][-1]["test_top1"])

    return min(groups, key=rank), first


def without_seed(runs, seed):
    return [run for run in runs if seed_of(run) != seed]
