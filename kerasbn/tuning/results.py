"""What a finished study gives its user, in the study directory: the best configuration as a
flagfile `train --flagfile` runs as is, the trials as a Markdown table, Optuna's plots as
PNG files, and the iterations the search spent against what a grid over the same choices
would spend.
"""

import os
import warnings

from optuna.visualization import matplotlib as optuna_plots

from kerasbn.analysis import charts
from kerasbn.runs.run_dir import RunDir
from kerasbn.tuning import space as space_lib, study as study_lib
from kerasbn.utils import atomic

BEST_FLAGS = "best.flags"
TABLE = "trials.md"
PLOTS = ("history", "slice", "importance", "intermediate")
STATES = study_lib.STATES


def _state(trial, study):
    """A trial's state as the table says it: a retried one names its retry."""
    if trial.state != STATES.FAIL:
        return trial.state.name.lower()
    retries = [t.number for t in study.get_trials(deepcopy=False)
               if t.system_attrs.get("failed_trial") == trial.system_attrs.get(
                   "failed_trial", trial.number) and t.number > trial.number]
    return f"stopped, retried as {retries[0]}" if retries else "failed"


def rows(study):
    """One row per trial (a surplus one left out): number, state, params, objective,
    iterations it trained, run dir."""
    out = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(study_lib.SURPLUS) or trial.state == STATES.WAITING:
            continue
        out.append({"trial": trial.number, "state": _state(trial, study),
                    "params": trial.params, "objective": trial.value,
                    "iterations": trial.user_attrs.get("iterations"),
                    "diverged": trial.user_attrs.get("diverged", False),
                    "run_dir": trial.user_attrs.get("run_dir")})
    return out


def spent(table):
    """Iterations the study trained, each run dir counted once (a resumed trial continues
    its original's run, so the retry's count includes the original's)."""
    last = {}
    for row in table:
        if row["run_dir"] and row["iterations"] is not None:
            last[row["run_dir"]] = max(last.get(row["run_dir"], 0), row["iterations"])
    return sum(last.values())


def markdown(table, names):
    """The trials as a Markdown table, the searched settings `names` as columns."""
    head = ["trial", "state", *names, "objective", "iterations", "run dir"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [str(row["trial"]), row["state"] + (" (diverged)" if row["diverged"] else ""),
                 *[space_lib.flag_text(row["params"][n]) if n in row["params"] else "-"
                   for n in names],
                 "-" if row["objective"] is None else f"{row['objective']:g}",
                 "-" if row["iterations"] is None else str(row["iterations"]),
                 row["run_dir"] or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_flagfile(study, study_dir):
    """The best trial's training flags (its run's flags.txt) as a flagfile that trains it
    from scratch in STUDY_DIR/best; None before any trial completes."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    with open(RunDir(os.path.join(study_dir, best.user_attrs["run_dir"])).flags_txt,
              encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if not line.startswith("--run_dir=")]
    drawn = " ".join(f"{k}={space_lib.flag_text(v)}" for k, v in best.params.items())
    head = [f"# The best trial of study {study.study_name!r}: trial {best.number}, objective "
            f"{best.value:g}", f"# ({drawn}).",
            "# python -m kerasbn.train --flagfile=THIS trains it from scratch."]
    return "\n".join(head + lines + [f"--run_dir={os.path.join(study_dir, 'best')}"]) + "\n"


def grid_cost(space, max_iter):
    """(grid points, iterations a grid over the space's choices would train, each to
    max_iter) or (None, the reason there is no grid)."""
    try:
        points = space.grid()
    except space_lib.SpaceError as e:
        return None, str(e)
    return len(points), len(points) * max_iter


def versus_grid(study, grid, test_interval):
    """The line comparing `study` with `grid`, a finished grid study of the same question
    (space, flags, target, objective): the best objective of each, how many test intervals
    apart, and the iterations each trained against the grid run to completion."""
    if grid.user_attrs.get("definition") != study.user_attrs.get("definition"):
        raise study_lib.StudyError("--versus_grid names a study of another space, flags, "
                                   "target or objective; compare studies of one question")
    points = [t for t in grid.get_trials(deepcopy=False) if not t.user_attrs.get(
        study_lib.SURPLUS) and t.state != STATES.FAIL]
    cap = study.user_attrs["definition"]["cap"]
    try:
        best, grid_best = study.best_value, grid.best_value
    except ValueError:
        return "no trial of the study or of the grid completed: nothing to compare"
    used, grid_used = spent(rows(study)), spent(rows(grid))
    return (f"against the grid ({len(points)} points): best {best:g} here, {grid_best:g} "
            f"there ({(best - grid_best) / test_interval:+.1f} test intervals); iterations "
            f"trained {used} here, {grid_used} by the grid stopping at the target, "
            f"{len(points) * cap:g} by the grid run to completion "
            f"({used / (len(points) * cap):.2f} of it)")


def _intermediate_plot(study):
    """Optuna's intermediate-values plot with each pruned trial's last value marked."""
    ax = optuna_plots.plot_intermediate_values(study)
    pruned = [t for t in study.get_trials(deepcopy=False, states=(STATES.PRUNED,))
              if t.intermediate_values]
    for i, trial in enumerate(pruned):
        step = max(trial.intermediate_values)
        ax.plot([step], [trial.intermediate_values[step]], "x", color="red", markersize=9,
                label="pruned" if i == 0 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective so far")
    if pruned:
        ax.legend(fontsize=7)
    return ax


def plots(study, study_dir):
    """Writes Optuna's plots as PNG files; returns {name: path} of those it could draw (a
    parameter's importance needs two completed trials that differ)."""
    charts.pyplot()
    draw = {"history": optuna_plots.plot_optimization_history,
            "slice": optuna_plots.plot_slice,
            "importance": optuna_plots.plot_param_importances,
            "intermediate": _intermediate_plot}
    written = {}
    for name in PLOTS:
        try:
            # Optuna and matplotlib warn of small studies (equal importances, one x value).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw[name](study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        path = os.path.join(study_dir, f"{name}.png")
        charts.save_figure(figure, path)
        written[name] = path
    return written


def write(study, plan):
    """Writes the study's results into its directory; returns the lines to print."""
    table = rows(study)
    names = [entry.name for entry in plan.space.entries]
    text = markdown(table, names)
    atomic.write_text(os.path.join(plan.study_dir, TABLE), text)
    lines = [text.rstrip()]
    best = best_flagfile(study, plan.study_dir)
    if best:
        path = os.path.join(plan.study_dir, BEST_FLAGS)
        atomic.write_text(path, best)
        lines.append(f"best: trial {study.best_trial.number}, objective "
                     f"{study.best_trial.value:g}; train it: python -m kerasbn.train "
                     f"--flagfile={path}")
    points, cost = grid_cost(plan.space, plan.max_iter)
    used = spent(table)
    lines.append(f"iterations trained: {used}" + (
        f", against {cost} for a grid of {points} configurations run to iteration "
        f"{plan.max_iter} ({used / cost:.2f} of it)" if points else f" (no grid: {cost})"))
    written = plots(study, plan.study_dir)
    lines.append(f"table: {os.path.join(plan.study_dir, TABLE)}; plots: "
                 + ", ".join(written.values()))
    return lines
