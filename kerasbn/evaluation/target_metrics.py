"""Targets: a figure a run should reach (`--target=METRIC:VALUE`, `--target_accuracy`), named
once here so the config can check them and a run's summary can report them.

"Reached a target" is the study's measure (docs/reference.md section 1): the first tested
iteration whose test top-1 >= the target; a target on another metric (`verify_acc:0.9`) is
reached the same way on that metric.
"""

from kerasbn.utils import errors

# Metrics a --target may name: recorded at tests, higher is better.
TARGET_METRICS = ("test_top1", "test_top5", "verify_acc", "verify_auc", "verify_tar@far=0.01",
                  "verify_tar@far=0.001")
# Short names a target may use for the test figures (top1:0.8).
ALIASES = {"top1": "test_top1", "top5": "test_top5"}


def parse_target(text):
    """(metric, value) of a `METRIC:VALUE` target; a bare number is a test top-1 target."""
    metric, _, value = text.rpartition(":")
    metric = ALIASES.get(metric, metric or "test_top1")
    if metric not in TARGET_METRICS:
        raise errors.UserError(f"--target={text}: the metric must be one of "
                         f"{', '.join(TARGET_METRICS)}")
    try:
        value = float(value)
    except ValueError:
        raise errors.UserError(f"--target={text}: expected METRIC:VALUE, e.g. verify_acc:0.9") \
            from None
    if not 0 < value <= 1:
        raise errors.UserError(f"--target={text}: the value must lie in (0, 1]")
    return metric, value


def target_name(target):
    """A target's key in summary.json: `0.8` for test top-1 (as before), else METRIC:VALUE."""
    metric, value = target
    return f"{value:g}" if metric == "test_top1" else f"{metric}:{value:g}"


def target_order(target):
    """Sort key of (metric, value) targets: top-1 first, then by metric; each ascending."""
    metric, value = target
    return metric != "test_top1", metric, value


def shown_target(name):
    """A summary.json target key as a person reads it: `top-1 0.8`, `verify_acc 0.9`."""
    return name.replace(":", " ") if ":" in name else f"top-1 {name}"
