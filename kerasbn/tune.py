"""Searches training settings for the configuration that reaches a target soonest, with
Optuna: TPE draws each trial's settings from a space file, a pruner stops trials that fall
behind at a rung, and every trial is an ordinary run in STUDY_DIR/trials/NNN.

    python -m kerasbn.tune --space=launch/tune/study_quick.yaml --data_dir=data/quickstart \\
        --study_dir=runs/tune_quick --trials=12
    python -m kerasbn.tune ... --max_iter=400          # any training flag: every trial
    python -m kerasbn.tune ... --storage=postgresql://kerasbn:PASS@db-host/kerasbn

The objective is iterations to --target (or seconds, --objective=seconds); a trial that
never reaches it ranks behind all that do, by its best figure (docs/tuning.md). Any other
training flag goes to every trial.
The study lives in STUDY_DIR/study.db (SQLite) unless --storage names a database, which any
number of tune processes, on any number of machines, share: each takes the next trial. Rerun
the same command after a stop (Ctrl-C, SIGTERM, a killed machine) to continue: a trial that
was running resumes from its checkpoint. At the end: STUDY_DIR/best.flags (train it as is),
trials.md, and history/slice/importance/intermediate PNG plots.
"""

import os
import sys

from absl import flags

from kerasbn.data import records
from kerasbn.evaluation import target_metrics
from kerasbn.flags import cli, train_flags
from kerasbn.tuning import objective, results, search, space, study as study_lib
from kerasbn.utils import errors

STOPPED = ("every trial's run is kept and a stopped trial resumes from its checkpoint; rerun "
           "the same command to go on")
# tune's own flags; any other training flag given is passed to every trial.
OWN = ("space", "data_dir", "study_dir", "trials", "storage", "target", "objective", "seed",
       "sampler", "pruner", "seconds_cap", "versus_grid", "verbosity", "v", "flagfile")


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("space", None, "Search space, a YAML file (launch/tune/*.yaml).", **on)
    flags.DEFINE_string("data_dir", None, "Dataset every trial trains on.", **on)
    flags.DEFINE_string("study_dir", None, "Where the study keeps its trials' runs, its "
                        "SQLite file and its results.", **on)
    flags.DEFINE_integer("trials", None, "Trials to finish (with other processes on the "
                         "same study), pruned ones included.", lower_bound=1, **on)
    flags.DEFINE_string("storage", None, "Optuna RDB storage URL (postgresql://user:pass@host"
                        "/db) shared by several tune processes; default "
                        "sqlite:///STUDY_DIR/study.db.", **on)
    flags.DEFINE_string("target", "test_top1:0.8", "METRIC:VALUE to reach, as training's "
                        "--target (top1:0.8, verify_acc:0.9).", **on)
    flags.DEFINE_enum("objective", "iterations", objective.OBJECTIVES, "Minimise iterations "
                      "or training seconds to the target.", **on)
    flags.DEFINE_integer("seed", 0, "The sampler's seed.", lower_bound=0, **on)
    flags.DEFINE_enum("sampler", "tpe", study_lib.SAMPLERS, "tpe (Optuna's default), random, "
                      "or grid: every point of the space's grid once.", **on)
    flags.DEFINE_enum("pruner", "halving", study_lib.PRUNERS, "Successive halving or "
                      "Hyperband, rungs at the first test interval x3^k; none runs every "
                      "trial to its end or target.", **on)
    flags.DEFINE_string("versus_grid", None, "STUDY_DIR of a finished --sampler=grid study "
                        "of the same space and flags (its SQLite study.db): compare the "
                        "best found and the iterations spent with it.", **on)
    flags.DEFINE_float("seconds_cap", 86400.0, "With --objective=seconds: a trial is stopped "
                       "after this many training seconds without reaching the target.",
                       lower_bound=1.0, **on)


def split_argv(argv):
    """(tune's arguments, the training flags given for every trial)."""
    training = set(train_flags.names())
    own, train = [argv[0]], []
    for arg in argv[1:]:
        name = cli.flag_name(arg)
        bare = name[2:] if name and name.startswith("no") and name[2:] in training else name
        (train if bare in training and bare not in OWN else own).append(arg)
    return own, train


def checker(base, manifest):
    """check(training flags): the RunConfig a trial given them after the base flagfile
    would train, or a UserError."""
    def check(trial_flags):
        values = flags.FlagValues()
        train_flags.define(values)
        try:
            values(cli.expand(["train", f"--flagfile={base}", *trial_flags, "--run_dir=trial"],
                              values))
        except (flags.Error, OSError) as e:
            raise errors.UserError(" ".join(str(e).split())) from None
        return train_flags.to_config(values, manifest)
    return check


def make_plan(values, train_args):
    loaded = space.load(values.space)
    searched = {e.name for e in loaded.entries} | set(loaded.fixed)
    for arg in train_args:
        if cli.flag_name(arg) in searched:
            raise errors.UserError(f"{arg}: {values.space} sets --{cli.flag_name(arg)} for "
                                   "every trial; leave it out here, or out of the space")
        if cli.flag_name(arg) in ("run_dir", "overwrite"):
            raise errors.UserError(f"{arg}: tune places each trial's run in "
                                   "STUDY_DIR/trials/NNN itself; give --study_dir")
    target = target_metrics.parse_target(values.target)
    train_args = [f"--data_dir={values.data_dir}", *train_args]
    manifest = records.read_manifest(values.data_dir)
    check = checker(loaded.base, manifest)
    base = check([*train_args, search.target_flag(target)])
    if not base.test_interval:
        raise errors.UserError("tune judges trials at their tests: give --test_interval")
    cap = base.max_iter if values.objective == "iterations" else values.seconds_cap
    plan = search.Plan(loaded, values.study_dir, tuple(train_args), target, values.objective,
                       cap, base.max_iter, values.trials, check)
    return plan, base.test_interval


def main(argv):
    own, train_args = split_argv(argv)
    values, rest = cli.parse(own, define_flags, __doc__)
    if rest:
        sys.exit(f"error: unexpected arguments {rest}; every setting is a --flag")
    for name in ("space", "data_dir", "study_dir", "trials"):
        if values[name].value is None:
            sys.exit(f"error: --{name} is required")
    cli.check_writable(values.study_dir, "study_dir", by_tensorflow=True)
    if values.versus_grid and not os.path.isfile(
            os.path.join(values.versus_grid, study_lib.DB_NAME)):
        sys.exit(f"error: --versus_grid={values.versus_grid} holds no {study_lib.DB_NAME}; "
                 "give the --study_dir of a finished --sampler=grid study")
    study_lib.quiet()
    try:
        plan, first_rung = make_plan(values, train_args)
        os.makedirs(values.study_dir, exist_ok=True)
        url = values.storage or study_lib.default_storage(values.study_dir)
        name = os.path.splitext(os.path.basename(values.space))[0]
        grid = plan.space.grid() if values.sampler == "grid" else None
        if grid and values.trials != len(grid):
            raise errors.UserError(f"the grid of {values.space} has {len(grid)} points: give "
                                   f"--trials={len(grid)} to run each once")
        definition = {"space": plan.space.digest, "training flags": list(plan.train_args),
                      "target": values.target, "objective": values.objective,
                      "cap": plan.cap}
        study = study_lib.open_study(
            url, name, definition, study_lib.sampler(values.sampler, values.seed),
            study_lib.pruner(values.pruner, first_rung, plan.max_iter), grid)
    except errors.UserError as e:
        sys.exit(f"error: {e}")
    target = target_metrics.shown_target(target_metrics.target_name(plan.target))
    print(f"study {name!r} ({study_lib.hidden(url)}): {values.trials} trials, objective "
          f"{values.objective} to {target}; watch it: optuna-dashboard "
          f"{study_lib.hidden(url)}", flush=True)
    cli.run(lambda: search.work(study, plan), STOPPED)
    for line in results.write(study, plan):
        print(line, flush=True)
    if values.versus_grid:
        grid = cli.run(lambda: study_lib.load(study_lib.default_storage(values.versus_grid),
                                              name), "nothing was compared")
        print(cli.run(lambda: results.versus_grid(study, grid, first_rung),
                      "nothing was compared"), flush=True)


if __name__ == "__main__":
    main(sys.argv)
