"""The Optuna study behind `tune`: its storage, sampler and pruner, and what it was made for.

Storage is Optuna's RDB storage: an SQLite file in the study directory by default, or any
URL it takes (`postgresql://user:pass@host/db`), which lets any number of processes on any
number of machines share the study. Each process beats a heartbeat for the trial it runs;
a trial whose heartbeat stops (its process was killed) is failed by the next process that
looks and retried with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback), so no trial
is lost and none runs twice.
"""

import logging
import os
import warnings

import optuna
import sqlalchemy

from kerasbn.utils import errors

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("halving", "hyperband", "none")
# Successive halving keeps the best third at each rung (Hyperband's default rate).
REDUCTION_FACTOR = 3
# A trial's process beats every HEARTBEAT_SECONDS; one silent for GRACE_SECONDS is stale.
HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 20
STATES = optuna.trial.TrialState
# The states that hold a place among --trials: done, or running or waiting to run.
DONE = (STATES.COMPLETE, STATES.PRUNED)
LIVE = DONE + (STATES.RUNNING, STATES.WAITING)
SURPLUS = "surplus"
DB_NAME = "study.db"


class StudyError(errors.UserError):
    """A study that cannot be opened or continued as asked."""


def quiet():
    """Optuna's own log lines off: tune prints its own."""
    optuna.logging.set_verbosity(logging.WARNING)
    optuna.logging.disable_default_handler()


def _unwarned(make):
    """`make()` without Optuna's warnings that heartbeats and their retry are experimental
    and meant for Study.optimize: tune beats them itself (`beat`) around ask and tell."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return make()


def default_storage(study_dir):
    """The SQLite file a study keeps when no --storage is given."""
    return f"sqlite:///{os.path.abspath(os.path.join(study_dir, DB_NAME))}"


def storage(url):
    """Optuna's RDB storage at `url`, with heartbeats and retries of stale trials."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return _unwarned(lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback()))
    except Exception as e:  # SQLAlchemy's and the drivers' errors have no common base
        raise StudyError(f"--storage={hidden(url)} cannot be opened: "
                         f"{' '.join(str(e).split())[:300]}") from None


def hidden(url):
    """`url` with its password as ***, for messages (SQLAlchemy's rendering); a URL it
    cannot parse is shown from its host on."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url.rpartition("@")[2]


def sampler(name, seed):
    """Optuna's sampler `name`; a grid's points are enqueued by `open_study`, so its sampler
    only draws what no point fixes (nothing)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def pruner(name, first_rung, max_iter):
    """Optuna's pruner `name`, its rungs in iterations from `first_rung` (the first test)."""
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung,
                                                      reduction_factor=REDUCTION_FACTOR)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first_rung, max_resource=max_iter,
                                              reduction_factor=REDUCTION_FACTOR)
    return optuna.pruners.NopPruner()


def open_study(url, name, definition, sampler_, pruner_, grid_points=None):
    """The study `name` at `url`, made if new, after checking that it was made for the same
    `definition` (space, base flags, target, objective): trials of another definition are not
    comparable. A grid study is made with every grid point enqueued once."""
    study = optuna.create_study(storage=storage(url), study_name=name, sampler=sampler_,
                                pruner=pruner_, direction="minimize", load_if_exists=True)
    stored = study.user_attrs.get("definition")
    if stored is None:
        study.set_user_attr("definition", definition)
        for point in grid_points or ():
            study.enqueue_trial(point, skip_if_exists=True)
    elif stored != definition:
        changed = sorted(k for k in set(stored) | set(definition)
                         if stored.get(k) != definition.get(k))
        raise StudyError(f"study {name!r} at {hidden(url)} was made with another "
                         f"{', '.join(changed)}; rerun it as it was, or give a new --study_dir "
                         "(or --storage) for the new study")
    return study


def load(url, name):
    """The existing study `name` at `url`."""
    try:
        return optuna.load_study(study_name=name, storage=storage(url))
    except KeyError:
        raise StudyError(f"no study {name!r} at {hidden(url)}; run it first") from None


def ask(study):
    """The next trial of `study`: a queued one (a retry, a grid point) first."""
    return _unwarned(study.ask)


def tally(study):
    """(trials done, places taken, trials waiting): places are the done, running and waiting
    trials (a surplus one excluded), which --trials bounds."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
    done = sum(t.state in DONE for t in trials)
    live = sum(t.state in LIVE for t in trials)
    waiting = sum(t.state == STATES.WAITING for t in trials)
    return done, live, waiting


def surplus(study, trial, limit):
    """Whether `trial`, just asked for, is past --trials: two processes that asked at once
    for the last place. The earlier-numbered trials keep their places; a retry keeps its
    original's."""
    if "failed_trial" in frozen(study, trial).system_attrs:
        return False
    ahead = [t for t in study.get_trials(deepcopy=False, states=LIVE)
             if t.number < trial.number and not t.user_attrs.get(SURPLUS)]
    return len(ahead) >= limit


# Optuna's ask-and-tell interface leaves heartbeats and retries to the caller; these reach
# the storage and a trial's id as Optuna's own optimize loop does.
def frozen(study, trial):
    """The stored record of a running `trial` (its system attributes among them)."""
    return study._storage.get_trial(trial._trial_id)


def retry(study, trial):
    """Queues `trial` (stopped before it ended) to run again with the same parameters."""
    _unwarned(optuna.storages.RetryHeartbeatStaleTrialCallback)(study, frozen(study, trial))


def beat(study, trial):
    """Records that the process running `trial` is alive."""
    study._storage.record_heartbeat(trial._trial_id)


def fail_stale(study):
    """Fails the trials whose process stopped beating, queueing each again."""
    _unwarned(lambda: optuna.storages.fail_stale_trials(study))
