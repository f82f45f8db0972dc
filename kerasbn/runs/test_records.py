"""What a run's test records say (summary.json): best and final figures, and the first
iteration and wall time at which each target was reached."""

import numpy as np

from kerasbn.evaluation import target_metrics


def summarize(entries, targets):
    """Best and final test top-1, and for each target the first iteration and wall time.

    `targets` are test top-1 values, or (metric, value) pairs."""
    if not entries:
        return {"tests": 0}
    best = max(entries, key=lambda e: (e["test_top1"], -e["iteration"]))
    reached = {}
    for target in targets:
        metric, value = target if isinstance(target, tuple) else ("test_top1", target)
        hit = next((e for e in entries if e.get(metric) is not None and e[metric] >= value),
                   None)
        reached[target_metrics.target_name((metric, value))] = (None if hit is None else
                                  {"iteration": hit["iteration"], "wall_time": hit["wall_time"]})
    final = entries[-1]
    summary = {"tests": len(entries),
               "best_test_top1": best["test_top1"], "best_iteration": best["iteration"],
               "final_test_top1": final["test_top1"], "final_iteration": final["iteration"],
               "final_wall_time": final["wall_time"], "targets": reached}
    verified = [e for e in entries if e.get("verify_acc") is not None]
    if verified:
        best = max(verified, key=lambda e: (e["verify_acc"], -e["iteration"]))
        summary.update(best_verify_acc=best["verify_acc"],
                       best_verify_iteration=best["iteration"],
                       final_verify={k: v for k, v in verified[-1].items()
                                     if k.startswith("verify_")})
    return summary


def all_reached(summary):
    """Whether a summary's run has reached every one of its targets."""
    targets = summary.get("targets")
    return bool(targets) and all(targets.values())


def stability(entries):
    """Mean absolute change of test top-1 between consecutive tests over the second half of
    the run: how much the test curve jumps once training has settled (docs/reference.md's side
    study compared BN implementations by it)."""
    last = entries[-1]["iteration"]
    tail = [e["test_top1"] for e in entries if e["iteration"] >= last / 2]
    return float(np.mean(np.abs(np.diff(tail)))) if len(tail) > 1 else float("nan")


def median_speed(entries):
    """Median training images/s over the entries that measured it (None if none did)."""
    rates = [e["images_per_sec"] for e in entries if e.get("images_per_sec")]
    return float(np.median(rates)) if rates else None
