"""Runs a named set of experiments (launch/sets/NAME/*.flags) one after another, then the report.

    python -m kerasbn.launch study_quick                      # the study's four runs, small
    python -m kerasbn.launch study --data_dir=data/casia --dry_run > jobs.txt   # for a queue
    python -m kerasbn.launch study_quick --data_dir=data/att --run_root=runs/study_quick_att
    python -m kerasbn.launch beyond_quick --reference=runs/study_quick/bn_multistep_no_dropout
    python -m kerasbn.launch study_quick --seeds=3 --sweep=base_lr=0.005,0.01,0.02,0.05

Each flagfile of the set is one `python -m kerasbn.train --flagfile=...` run; --data_dir
and --precision, when given, are passed to every run. --run_root moves every run dir (and the
report) under one directory, so the same set on other data does not resume the first runs.
--seeds=N runs each configuration with seeds 0..N-1 (run dirs RUN-seedS). --sweep=FLAG=V1,V2
(repeatable: a grid) runs seed 0 of each configuration at each value (run dirs
RUN-FLAGV-seedS); once those have finished, it picks each configuration's best value on them
(the report's rule) and runs the other seeds only there and at the reference's best value,
the two values the report's speedups need; so a sweep needs --seeds=3 or more. --dry_run
prints the commands (one per line, for a cluster queue) instead of running them; the last
line is the report command. With a sweep whose first seed has not finished, it prints the
first seed's commands and a line saying to rerun it once they have.

Several launchers may work through one set at once (one per GPU or queue slot): each skips
the runs already finished and those another process is training (the run directory's lock
decides who trains a run), and the one that finishes the last run writes the report.
"""

import glob
import importlib.resources
import itertools
import os
import re
import shlex
import subprocess
import sys
import time

from absl import flags

from kerasbn.analysis import comparison, seeds
from kerasbn.flags import cli, train_flags
from kerasbn.runs.run_dir import BUSY_EXIT, RunDir
from kerasbn.serving import exporter
from kerasbn.utils import errors

WAIT_SECONDS = 10
STOPPED = ("finished runs are kept and a stopped one resumes from its last checkpoint; rerun "
           "the same command to go on")


def sets_dir():
    """The experiment sets' directory (the repository's launch/sets, or the installed copy)."""
    return str(importlib.resources.files("kerasbn.launch_files") / "sets")


def _shown(path):
    """`path` relative to the working directory when it lies below it (shorter commands)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def set_flagfiles(name):
    """The flagfiles of set `name` (a directory under launch/sets, or a path), in order."""
    directory = name if os.path.isdir(name) else os.path.join(sets_dir(), name)
    files = [_shown(f) for f in sorted(glob.glob(os.path.join(directory, "*.flags")))]
    if not files:
        known = sorted(os.listdir(sets_dir())) if os.path.isdir(sets_dir()) else []
        raise errors.UserError(f"no experiment set {name!r}: {directory} holds no .flags files; "
                         f"known sets: {', '.join(known)}")
    return files


def run_dir_of(flagfile):
    """The --run_dir a flagfile sets, its includes too (the last one wins, as in absl)."""
    run_dir = None
    for line in cli.read_flagfile(flagfile):
        if cli.flag_name(line) == "run_dir":
            run_dir = line.split("=", 1)[1]
    if not run_dir:
        raise errors.UserError(f"{flagfile} sets no --run_dir; every run of a set needs its own")
    return run_dir


# Training flags the launcher sets itself for every run: a sweep may not vary them.
LAUNCHER_FLAGS = ("seed", "run_dir", "overwrite")


def parse_sweep(texts):
    """[(flag, [values])] of --sweep's FLAG=V1,V2 items; UserError naming a bad one."""
    known = set(train_flags.names())
    # The training flags themselves check each value, as a run given it would.
    probe = flags.FlagValues()
    train_flags.define(probe)
    sweeps = []
    for text in texts:
        flag, _, listed = text.partition("=")
        values = [v for v in listed.split(",") if v]
        if flag not in known or not values:
            raise errors.UserError(f"--sweep={text}: give a training flag and its values, e.g. "
                             "--sweep=base_lr=0.005,0.01,0.02,0.05")
        if flag in LAUNCHER_FLAGS:
            raise errors.UserError(f"--sweep={text}: the launcher sets --{flag} for each run "
                                   "itself (--seeds for seeds, --run_root for run dirs); sweep "
                                   "another flag")
        if flag in [swept for swept, _ in sweeps]:
            raise errors.UserError(f"--sweep={text}: --{flag} is swept twice; give its values "
                                   "in one --sweep")
        if len(set(values)) < len(values):
            raise errors.UserError(f"--sweep={text}: a value is listed twice")
        for value in values:
            try:
                probe[flag].parse(value)
            except (flags.Error, ValueError) as e:
                raise errors.UserError(f"--sweep={text}: {value} is no value of --{flag} "
                                       f"({str(e).splitlines()[0]})") from None
        sweeps.append((flag, values))
    return sweeps


def _path_safe(value):
    """A swept value as part of a run dir's name: nothing but letters, digits, '.', '-' and
    '_', so no value (`../x`, `a/b`) can place a run outside its run root."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", value)


def commands(name, extra_args, run_root=None, seeds=None, sweeps=()):
    """[{command, run_dir, flagfile, seed, point}]: one train command per flagfile of set
    `name`, or, with `seeds` and `sweeps`, per flagfile, swept value (the grid of `sweeps`,
    `point` one of its ((flag, value), ...)) and seed, seed 0 of every configuration first.
    With `run_root`, run k goes to RUN_ROOT/<basename of its flagfile's run dir>.
    """
    python = [sys.executable, "-m"]
    files = set_flagfiles(name)
    bases = [run_dir_of(f) for f in files]
    if run_root:
        bases = [os.path.join(run_root, os.path.basename(d.rstrip("/"))) for d in bases]
    grid = list(itertools.product(*[[(flag, v) for v in values] for flag, values in sweeps]))
    plan = []
    # Seeds outermost: a set stopped part-way already compares every configuration.
    for seed in range(seeds) if seeds else [None]:
        for point in grid:
            for flagfile, base in zip(files, bases):
                suffix = "".join(f"-{flag}{_path_safe(value)}" for flag, value in point) + (
                    "" if seed is None else f"-seed{seed}")
                run_dir = base.rstrip("/") + suffix
                command = (python + ["kerasbn.train", f"--flagfile={flagfile}"] + extra_args
                           + [f"--{flag}={value}" for flag, value in point]
                           + ([] if seed is None else [f"--seed={seed}"])
                           + ([f"--run_dir={run_dir}"] if run_root or suffix else []))
                plan.append({"command": command, "run_dir": run_dir, "flagfile": flagfile,
                             "seed": seed or 0, "point": point})
    run_dirs = [run["run_dir"] for run in plan]
    if len(set(run_dirs)) < len(run_dirs):
        raise errors.UserError(f"two runs of set {name!r} share a run dir name"
                         + (f" under {run_root}" if run_root else ""))
    return plan


def report_dir(name, report_out=None, run_root=None):
    """Where set `name`'s report goes: REPORT_OUT, else RUN_ROOT/report, else
    runs/SET/report."""
    return report_out or os.path.join(
        run_root or os.path.join("runs", os.path.basename(name.rstrip("/"))), "report")


def report_command(name, run_dirs, report_out=None, run_root=None, reference=None,
                   sweeps=()):
    """The report over `run_dirs`, written to `report_dir`."""
    return [sys.executable, "-m", "kerasbn.report", *run_dirs,
            f"--out={report_dir(name, report_out, run_root)}"] + (
        [f"--reference={reference}"] if reference else []) + (
        [f"--sweep={','.join(flag for flag, _ in sweeps)}"] if sweeps else [])


def chosen(plan, sweeps, reference=None):
    """The runs of `plan` a sweep needs beyond its first seed: each configuration at its own
    best value and at the reference's (the report's two speedups), both chosen on the
    finished first-seed runs by the report's rule."""
    first = [run for run in plan if run["seed"] == 0]
    runs = [comparison.load_run(run["run_dir"]) for run in first]
    of_dir = {os.path.normpath(run["run_dir"]): run for run in first}
    choices = comparison.sweep_choices(seeds.group(runs), [flag for flag, _ in sweeps],
                                   comparison.tracked_targets(runs)[0])

    def best(choice):
        return of_dir[os.path.normpath(choice["best"]["runs"][0]["dir"])]

    wanted_reference = os.path.normpath(reference or comparison.default_reference(runs))
    ref_points = [best(c)["point"] for c in choices
                  if any(os.path.normpath(r["dir"]) == wanted_reference
                         for g in c["groups"] for r in g["runs"])]
    wanted = {(best(c)["flagfile"], point) for c in choices
              for point in [best(c)["point"]] + ref_points}
    return [run for run in plan
            if run["seed"] > 0 and (run["flagfile"], run["point"]) in wanted]


def finished(run_dir):
    """Whether the run ended: its summary says so (or, for a run from before that mark, its
    export, which training wrote last, exists)."""
    run = RunDir(run_dir)
    return run.finished() or exporter.is_export(run.export)


def work_through(runs, run_dirs):
    """Trains every run not finished and not claimed by another process, in order. Exits on
    a failed run."""
    for index, (command, run_dir) in enumerate(zip(runs, run_dirs), start=1):
        head = f"== run {index}/{len(runs)}"
        if finished(run_dir):
            print(f"{head}: {run_dir} finished", flush=True)
            continue
        if not RunDir(run_dir).busy():
            print(f"{head}: {shlex.join(command)}", flush=True)
            code = subprocess.run(command).returncode
            if code == 0:
                continue
            if code != BUSY_EXIT:
                sys.exit(f"error: run {index} failed; fix it and rerun (finished runs resume)")
        print(f"{head}: {run_dir} is being trained by another process", flush=True)


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("data_dir", None, "Dataset for every run (overrides the flagfiles).",
                        **on)
    flags.DEFINE_string("precision", None, "Precision for every run (overrides the "
                        "flagfiles).", **on)
    flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.", **on)
    flags.DEFINE_string("report_out", None,
                        "Report directory (default RUN_ROOT/report, else runs/SET/report).", **on)
    flags.DEFINE_string("reference", None, "Run dir the report's speedups are against, also "
                        "one outside the set (default: the set's baseline, else its first "
                        "run).", **on)
    flags.DEFINE_string("run_root", None, "Put every run dir of the set under this directory "
                        "(e.g. runs/study_quick_att for the same set on other data).", **on)
    flags.DEFINE_integer("seeds", None, "Run each configuration with seeds 0..N-1 (default: "
                         "once, with the flagfile's seed).", lower_bound=1, **on)
    flags.DEFINE_multi_string("sweep", [], "FLAG=V1,V2,...: run each configuration at each "
                              "value (repeatable: a grid); needs --seeds=3 or more.", **on)


def train_all(runs, wait=False):
    """Works through `runs`; with `wait`, until every one has finished (training any that
    a stopped launcher left unclaimed). Returns the runs still unfinished."""
    waiting = False
    while True:
        work_through([run["command"] for run in runs], [run["run_dir"] for run in runs])
        # Checked after the whole pass: runs skipped as claimed may have finished meanwhile.
        left = [run for run in runs if not finished(run["run_dir"])]
        if not (left and wait):
            return left
        if not waiting:
            print(f"waiting for {len(left)} first-seed runs other processes are training: "
                  "the sweep's choice needs them all", flush=True)
            waiting = True
        time.sleep(WAIT_SECONDS)


def main(argv):
    values, names = cli.parse(argv, define_flags, __doc__)
    if len(names) != 1:
        sys.exit("error: give one experiment set name, e.g. study_quick")
    extra = [f"--{name}={values[name].value}" for name in ("data_dir", "precision")
             if values[name].value]
    try:
        sweeps = parse_sweep(values.sweep)
        if sweeps and (values.seeds or 1) < 3:
            raise errors.UserError("a sweep picks each configuration's best value on the first "
                                   "seed and reports it on the others: give --seeds=3 or more")
        plan = commands(names[0], extra, values.run_root, values.seeds, sweeps)
    except (errors.UserError, flags.Error) as e:
        sys.exit(f"error: {e}")
    if not values.dry_run:
        for run_dir in dict.fromkeys(run["run_dir"] for run in plan):
            cli.check_writable(run_dir, "run_dir", by_tensorflow=True)
        cli.check_writable(report_dir(names[0], values.report_out, values.run_root),
                           "report_out")
    if sweeps:
        first = [run for run in plan if run["seed"] == 0]
        if values.dry_run and not all(finished(run["run_dir"]) for run in first):
            for run in first:
                print(shlex.join(run["command"]))
            print(f"# seeds 1-{values.seeds - 1} follow at each configuration's best "
                  f"{','.join(flag for flag, _ in sweeps)}, chosen on these runs: rerun "
                  "--dry_run once they have finished")
            return
        if not values.dry_run:
            cli.run(lambda: train_all(first, wait=True), STOPPED)
        try:
            plan = first + chosen(plan, sweeps, values.reference)
        except errors.UserError as e:
            sys.exit(f"error: {e}")
    command = report_command(names[0], [run["run_dir"] for run in plan], values.report_out,
                             values.run_root, values.reference, sweeps)
    if values.dry_run:
        for run in plan:
            print(shlex.join(run["command"]))
        print(shlex.join(command))
        return
    if cli.run(lambda: train_all(plan), STOPPED):
        print("some runs are being trained by other processes; the one that finishes the "
              f"last run writes the report (or run: {shlex.join(command)})")
        return
    sys.exit(cli.run(lambda: subprocess.run(command).returncode, STOPPED))


if __name__ == "__main__":
    main(sys.argv)
