"""Runs a named set of experiments (launch/sets/NAME/*.flags) one after another, then the report.

    python -m kerasbn.launch study_quick                      # the study's four runs, small
    python -m kerasbn.launch study --data_dir=data/casia --dry_run > jobs.txt   # for a queue
    python -m kerasbn.launch study_quick --data_dir=data/att --run_root=runs/study_quick_att
    python -m kerasbn.launch beyond_quick --reference=runs/study_quick/bn_multistep_no_dropout

Each flagfile of the set is one `python -m kerasbn.train --flagfile=...` run; --data_dir
and --precision, when given, are passed to every run. --run_root moves every run dir (and the
report) under one directory, so the same set on other data does not resume the first runs.
--dry_run prints the commands (one per line, for a cluster queue) instead of running them;
the last line is the report command.
"""

import glob
import importlib.resources
import os
import shlex
import subprocess
import sys

from absl import flags

from kerasbn import cli


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
        raise ValueError(f"no experiment set {name!r}: {directory} holds no .flags files; "
                         f"known sets: {', '.join(known)}")
    return files


def run_dir_of(flagfile):
    """The --run_dir a flagfile sets, its includes too (the last one wins, as in absl)."""
    run_dir = None
    for line in cli.read_flagfile(flagfile):
        if cli.flag_name(line) == "run_dir":
            run_dir = line.split("=", 1)[1]
    if not run_dir:
        raise ValueError(f"{flagfile} sets no --run_dir; every run of a set needs its own")
    return run_dir


def commands(name, extra_args, report_out=None, run_root=None, reference=None):
    """The train commands of the set, then the report command, as argument lists.

    With `run_root`, run k goes to RUN_ROOT/<basename of its flagfile's run dir>; the report
    defaults to RUN_ROOT/report, else to runs/SET/report.
    """
    python = [sys.executable, "-m"]
    files = set_flagfiles(name)
    run_dirs = [run_dir_of(f) for f in files]
    if run_root:
        run_dirs = [os.path.join(run_root, os.path.basename(d.rstrip("/"))) for d in run_dirs]
        if len(set(run_dirs)) < len(run_dirs):
            raise ValueError(f"two runs of set {name!r} share a run dir name under {run_root}")
    runs = [python + ["kerasbn.train", f"--flagfile={f}"] + extra_args
            + ([f"--run_dir={d}"] if run_root else []) for f, d in zip(files, run_dirs)]
    report_out = report_out or os.path.join(
        run_root or os.path.join("runs", os.path.basename(name.rstrip("/"))), "report")
    report = python + ["kerasbn.report", *run_dirs, f"--out={report_out}"] + (
        [f"--reference={reference}"] if reference else [])
    return runs, report


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


def main(argv):
    values, names = cli.parse(argv, define_flags, __doc__)
    if len(names) != 1:
        sys.exit("error: give one experiment set name, e.g. study_quick")
    extra = [f"--{name}={values[name].value}" for name in ("data_dir", "precision")
             if values[name].value]
    try:
        runs, report = commands(names[0], extra, values.report_out, values.run_root,
                                values.reference)
    except (ValueError, flags.Error) as e:
        sys.exit(f"error: {e}")
    if values.dry_run:
        for command in runs + [report]:
            print(shlex.join(command))
        return
    for index, command in enumerate(runs, start=1):
        print(f"== run {index}/{len(runs)}: {shlex.join(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            sys.exit(f"error: run {index} failed; fix it and rerun (finished runs resume)")
    sys.exit(subprocess.run(report).returncode)


if __name__ == "__main__":
    main(sys.argv)
