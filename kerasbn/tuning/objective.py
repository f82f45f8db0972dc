"""The study's objective: how soon a trial reaches its target, lower is better.

With `--objective=iterations` a trial that reaches the target scores the first tested
iteration at which its figure is >= the target (docs/reference.md's measure); with
`seconds`, the run's wall time there. A trial that never reaches it scores
`cap * (2 - best)`, `best` its best figure (all targets' figures lie in [0, 1]) and `cap` the
most any reaching trial can score (max_iter, or --seconds_cap, past which a trial is
stopped): so it ranks behind every trial that reaches the target, and among the others by
its best figure.

The pruner compares trials at a rung by their intermediate values, the objective as it
stands after each test (`value` of the tests so far): it never rises, it points the same
way as the final objective, and once a trial reaches its target it stays at the final value.
"""

OBJECTIVES = ("iterations", "seconds")


def hit(entries, target):
    """The first test entry at which the target (metric, value) is reached, else None."""
    metric, goal = target
    return next((e for e in entries if e.get(metric) is not None and e[metric] >= goal), None)


def best(entries, target):
    """The best figure of the target's metric over `entries` (0 before any)."""
    return max((e[target[0]] for e in entries if e.get(target[0]) is not None), default=0.0)


def value(entries, target, objective, cap):
    """The objective after the tests `entries`."""
    reached = hit(entries, target)
    if reached is not None:
        return float(reached["iteration"] if objective == "iterations" else reached["wall_time"])
    return cap * (2.0 - best(entries, target))
