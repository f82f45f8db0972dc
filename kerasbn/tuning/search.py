"""The search loop every `tune` process runs: take the next trial (a retried one first),
draw its settings, train it as an ordinary run in STUDY_DIR/trials/NNN, report each test to
the pruner, and tell the study how it ended; until the study holds --trials trials done.
"""

import dataclasses
import os
import sys
import time
from typing import Callable

from kerasbn.runs.run_dir import DIVERGED_EXIT, RunDir
from kerasbn.tuning import objective, space, study as study_lib, trial_run
from kerasbn.utils import errors

# How often a process with nothing to run looks again (others' trials are running).
WAIT_SECONDS = 5
STATES = study_lib.STATES
TRAIN_LOG = "train.log"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every trial of a study shares."""

    space: space.Space
    study_dir: str
    train_args: tuple   # training flags from tune's command line, after the space's
    target: tuple       # (metric, value)
    objective: str
    cap: float          # what a reaching trial scores at most (objective.value)
    max_iter: int
    trials: int
    check: Callable     # check(training flags): UserError when a trial's config is impossible

    def training_flags(self, flags):
        """A trial's training flags after the base flagfile: the space's `flags`, the
        command line's, the target."""
        return [*flags, *self.train_args, target_flag(self.target)]

    def command(self, flags, run_dir):
        return [sys.executable, "-m", "kerasbn.train", f"--flagfile={self.space.base}",
                *self.training_flags(flags), f"--run_dir={run_dir}"]


def target_flag(target):
    """Training's --target for (metric, value)."""
    metric, value = target
    return f"--target={metric}:{value:g}"


def trial_dir(trial):
    """The run dir a trial trains in, relative to the study dir: its own, or for a retry
    the one its original left (resumed from its checkpoint)."""
    return trial.user_attrs.get("run_dir") or os.path.join("trials", f"{trial.number:03d}")


def shown(values):
    return " ".join(f"{k}={space.flag_text(v)}" for k, v in values.items())


def work(study, plan, say=print):
    """Runs trials of `study` until it holds `plan.trials` done (with other processes)."""
    waiting_said = False
    while True:
        study_lib.fail_stale(study)
        done, live, waiting = study_lib.tally(study)
        if done >= plan.trials:
            return
        if live >= plan.trials and not waiting:
            if not waiting_said:
                say(f"{live - done} trials are running in other processes; waiting for them "
                    "(one whose process stops is retried here)")
                waiting_said = True
            time.sleep(WAIT_SECONDS)
            continue
        trial = study_lib.ask(study)
        if study_lib.surplus(study, trial, plan.trials):
            trial.set_user_attr(study_lib.SURPLUS, True)
            study.tell(trial, state=STATES.FAIL)
            continue
        study_lib.beat(study, trial)
        run_one(study, trial, plan, say)
        waiting_said = False


def run_one(study, trial, plan, say):
    """Trains one trial to its end, its target, a prune, or a stop; tells the study."""
    values = plan.space.sample(trial)
    flags = plan.space.flags(values)
    try:
        plan.check(plan.training_flags(flags))
    except errors.UserError as e:
        # Queued again, so a rerun after the base flagfile is fixed still runs this point.
        study.tell(trial, state=STATES.FAIL)
        study_lib.retry(study, trial)
        raise space.SpaceError(f"trial {trial.number} ({shown(values)}) cannot train: {e}; "
                               f"narrow {plan.space.path}") from None
    relative = trial_dir(trial)
    trial.set_user_attr("run_dir", relative)
    run = RunDir(os.path.join(plan.study_dir, relative))
    os.makedirs(run.path, exist_ok=True)
    resumed = run.checkpoint_iteration()
    say(f"trial {trial.number}: {shown(values)}" + (
        f" (resumes {relative} at iteration {resumed})" if resumed else f" ({relative})"))
    judge = _Judge(trial, plan, say)
    try:
        code, reason, entries = trial_run.watch(
            plan.command(flags, run.path), run, os.path.join(run.path, TRAIN_LOG), judge,
            lambda: study_lib.beat(study, trial), study_lib.HEARTBEAT_SECONDS)
    except KeyboardInterrupt:
        study.tell(trial, state=STATES.FAIL)
        study_lib.retry(study, trial)
        raise
    iterations = max(run.checkpoint_iteration(), entries[-1]["iteration"] if entries else 0)
    trial.set_user_attr("iterations", iterations)
    if reason == _Judge.PRUNED:
        run.mark_pruned({"iteration": judge.decided_at, "stopped_at": iterations,
                         "study": study.study_name, "trial": trial.number})
        study.tell(trial, state=STATES.PRUNED)
        say(f"trial {trial.number} pruned at iteration {judge.decided_at} (stopped at "
            f"{iterations}): behind the others at that rung")
        return
    if reason is None and code not in (0, DIVERGED_EXIT):
        _failed(study, trial, relative, run, code, say)
        return
    if code == DIVERGED_EXIT:
        trial.set_user_attr("diverged", True)
    result = objective.value(entries, plan.target, plan.objective, plan.cap)
    judge.settle(result)
    study.tell(trial, result)
    hit = objective.hit(entries, plan.target)
    say(f"trial {trial.number} " + (f"reached the target at iteration {hit['iteration']}"
                                    if hit else "did not reach the target"
                                    + (" (diverged)" if code == DIVERGED_EXIT else "")
                                    + f", best {objective.best(entries, plan.target):.4f}")
        + f": objective {result:g}")


def _failed(study, trial, relative, run, code, say):
    """A run that ended in an error: the trial fails with the log's last error line; one
    that resumed another trial's run is retried once more from scratch in its own dir."""
    try:
        with open(os.path.join(run.path, TRAIN_LOG), encoding="utf-8",
                  errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        lines = []
    line = next((x for x in reversed(lines) if x.startswith("error:")),
                lines[-1] if lines else f"exit status {code}")
    own = os.path.join("trials", f"{trial.number:03d}")
    again = relative != own
    if again:
        trial.set_user_attr("run_dir", None)
    study.tell(trial, state=STATES.FAIL)
    if again:
        study_lib.retry(study, trial)
    say(f"trial {trial.number} failed ({line}); its log is {os.path.join(run.path, TRAIN_LOG)}"
        + ("; retried from scratch" if again else ""))


class _Judge:
    """After each test: reports the objective so far to the pruner and says whether to stop
    (target reached, --seconds_cap passed, or pruned)."""

    PRUNED, REACHED, CAPPED = "pruned", "reached", "capped"

    def __init__(self, trial, plan, say):
        self.trial, self.plan, self.say = trial, plan, say
        self.reported = -1
        self.decided_at = None

    def __call__(self, entries):
        latest, plan = entries[-1], self.plan
        so_far = objective.value(entries, plan.target, plan.objective, plan.cap)
        if latest["iteration"] > self.reported:
            self.trial.report(so_far, step=latest["iteration"])
            self.reported = latest["iteration"]
        figure = latest.get(plan.target[0])
        self.say(f"  trial {self.trial.number} iteration {latest['iteration']}/{plan.max_iter}"
                 + (f" {plan.target[0]} {figure:.4f}" if figure is not None else "")
                 + f" ({latest['wall_time']:.0f}s)")
        reason = (self.REACHED if objective.hit(entries, plan.target)
                  else self.CAPPED if plan.objective == "seconds"
                  and latest["wall_time"] >= plan.cap
                  else self.PRUNED if latest["iteration"] and self.trial.should_prune()
                  else None)
        if reason:
            self.decided_at = latest["iteration"]
        return reason

    def settle(self, result):
        """The final value held to the end of the run, so the pruner's later rungs compare
        others with what this trial scored."""
        if self.reported < self.plan.max_iter:
            self.trial.report(result, step=self.plan.max_iter)
            self.trial.should_prune()
