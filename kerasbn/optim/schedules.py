"""Caffe learning-rate policies and the study's stepwise-then-jump policies, as serializable
Keras schedules of the global iteration.

`iter` is the number of finished weight updates, as Caffe's solver counts it: the schedule is
called with the optimizer's step counter, divided by `iter_size` when gradients accumulate
over several batches per update. A resumed run restores the counter and so continues the
same curve. docs/reference.md sections 1 and 3 give every formula.

`ScheduleConfig` is the schedule's part of a run's settings, checked when it is made;
`python -m kerasbn.show_schedule` prints and draws it.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from kerasbn.utils import errors, settings
from kerasbn.utils.settings import setting

CAFFE_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
SMOOTH_POLICIES = ("step", "exp", "inv")
STUDY_POLICIES = ("long_step", "short_step", "multistep_no_dropout")
# arcface_torch's PolynomialLRWarmup (recognition/arcface_torch/lr_scheduler.py).
ARCFACE_POLICY = "poly_warmup"
POLICIES = CAFFE_POLICIES + ("stepwise_then_jump", ARCFACE_POLICY) + STUDY_POLICIES
STUDY_MAX_ITER = 420_000


class ScheduleError(errors.UserError):
    """Learning-rate settings that make no schedule; the message names the flag and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """The learning-rate settings of a run (the `--lr_policy` flags), checked on creation:
    each against its own declaration (`settings.check`), then those that depend on others."""

    base_lr: float = setting(0.01, "Caffe base_lr.", lower=0, lower_open=True)
    lr_policy: str = setting(
        "multistep",
        "Caffe lr_policy (fixed, step, exp, inv, multistep, poly, sigmoid), stepwise_then_jump, "
        "poly_warmup (arcface_torch's PolynomialLRWarmup: --warmup_iter, --power, --max_iter), "
        "or a study preset: long_step, short_step, multistep_no_dropout (iterations scaled to "
        "--max_iter).", choices=POLICIES)
    gamma: float = setting(
        0.1,
        "Caffe gamma of step, exp, inv, multistep and sigmoid (negative only for sigmoid, whose "
        "rate then decays).")
    power: float = setting(1.0, "Caffe power of inv and poly; the power of poly_warmup.")
    stepsize: int = setting(10000, "Caffe stepsize of step and sigmoid.", lower=1)
    stepvalue: tuple = setting(
        (), "multistep: iterations at which lr *= gamma.", lower=1, kind="multi_integer")
    smooth_policy: str = setting(
        "step",
        "stepwise_then_jump: the smooth phase's Caffe policy (with --gamma, --power, --stepsize).",
        choices=SMOOTH_POLICIES)
    smooth_until: int = setting(150000, "stepwise_then_jump: the rate is held from here.", lower=1)
    jump_gamma: float = setting(0.1, "stepwise_then_jump: the factor at each --jump_at.", lower=0)
    jump_at: tuple = setting(
        (), "stepwise_then_jump: iterations (after --smooth_until) at which lr *= jump_gamma.",
        lower=1, kind="multi_integer")
    schedule_iters: int = setting(
        0, "The run length that --stepsize, --stepvalue, --smooth_until and --jump_at are written "
        "for; they scale to --max_iter as the study's policies do (0: as written).", lower=0)
    warmup_iter: int = setting(
        0, "Linear warm-up over the first N iterations (poly_warmup: arcface_torch's, its "
        "iteration 0 at the full rate).", lower=0)
    iter_size: int = setting(
        1, "Batches accumulated per weight update (Caffe iter_size): the effective batch is "
        "batch_size * iter_size. BN statistics still come from each batch of --batch_size.",
        lower=1)
    max_iter: int = setting(420000, "Iterations (weight updates) to train.", lower=1)

    def __post_init__(self):
        for name in ("stepvalue", "jump_at"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        settings.check(self, ScheduleError)
        policy = self.lr_policy
        # Caffe accepts any gamma; refused here is only what makes a rate negative or
        # undefined: a negative factor raised to a count (step, multistep, exp), a negative
        # base under a fractional power (inv). sigmoid decays with a negative gamma.
        smooth = self.smooth_policy if policy == "stepwise_then_jump" else policy
        if self.gamma < 0 and smooth in ("step", "multistep", "exp", "inv"):
            raise ScheduleError(f"--gamma={self.gamma} is negative, which makes --lr_policy="
                                f"{smooth} rates negative or undefined; give gamma >= 0 "
                                "(sigmoid alone decays with a negative gamma)")
        if policy == ARCFACE_POLICY and self.warmup_iter >= self.max_iter:
            raise ScheduleError(f"--warmup_iter={self.warmup_iter} leaves no iteration of "
                                f"--max_iter={self.max_iter} to decay over; give fewer")
        if self.schedule_iters and policy in STUDY_POLICIES:
            raise ScheduleError(f"--schedule_iters={self.schedule_iters}: give 0 or the run "
                                "length the schedule's iterations were written for; the "
                                "study's named policies already scale from 420,000")
        if not _increasing(self.stepvalue):
            raise ScheduleError(f"--stepvalue must be positive and strictly increasing, got "
                                f"{list(self.stepvalue)}")
        if policy == "stepwise_then_jump":
            if not _increasing(self.jump_at):
                raise ScheduleError("stepwise_then_jump needs --jump_at iterations in "
                                    "increasing order")
            if self.jump_at and self.jump_at[0] <= self.smooth_until:
                raise ScheduleError(f"--jump_at={self.jump_at[0]} comes before "
                                    f"--smooth_until={self.smooth_until}; jumps follow the "
                                    "smooth phase")


def _increasing(values):
    return list(values) == sorted(set(values)) and all(v > 0 for v in values)


def _iteration(step, iter_size):
    return ops.floor_divide(ops.cast(step, "int64"), iter_size)


@keras.saving.register_keras_serializable(package="kerasbn")
class CaffePolicy(keras.optimizers.schedules.LearningRateSchedule):
    """One of Caffe's lr_policy formulas (docs/reference.md section 3) of the iteration."""

    def __init__(self, policy, base_lr, gamma=0.1, power=1.0, stepsize=1, stepvalues=(),
                 max_iter=1, iter_size=1):
        if policy not in CAFFE_POLICIES:
            raise ValueError(f"unknown Caffe lr_policy {policy!r}; one of "
                             f"{', '.join(CAFFE_POLICIES)}")
        self.policy = policy
        self.base_lr = float(base_lr)
        self.gamma = float(gamma)
        self.power = float(power)
        self.stepsize = int(stepsize)
        self.stepvalues = [int(v) for v in stepvalues]
        self.max_iter = int(max_iter)
        self.iter_size = int(iter_size)

    def rate(self, iteration):
        """The rate at integer iteration tensor `iteration` (no iter_size division)."""
        it = ops.cast(iteration, "float32")
        base, gamma, power = self.base_lr, self.gamma, self.power
        if self.policy == "fixed":
            return base * ops.ones_like(it)
        if self.policy == "step":
            return base * ops.power(gamma, ops.floor(it / self.stepsize))
        if self.policy == "exp":
            return base * ops.power(gamma, it)
        if self.policy == "inv":
            return base * ops.power(1.0 + gamma * it, -power)
        if self.policy == "multistep":
            passed = sum((ops.cast(iteration >= v, "float32") for v in self.stepvalues),
                         ops.zeros_like(it))
            return base * ops.power(gamma, passed)
        if self.policy == "poly":
            return base * ops.power(ops.maximum(1.0 - it / self.max_iter, 0.0), power)
        return base / (1.0 + ops.exp(-gamma * (it - self.stepsize)))

    def __call__(self, step):
        return self.rate(_iteration(step, self.iter_size))

    def get_config(self):
        return {"policy": self.policy, "base_lr": self.base_lr, "gamma": self.gamma,
                "power": self.power, "stepsize": self.stepsize, "stepvalues": self.stepvalues,
                "max_iter": self.max_iter, "iter_size": self.iter_size}


@keras.saving.register_keras_serializable(package="kerasbn")
class StepwiseThenJump(keras.optimizers.schedules.LearningRateSchedule):
    """The study's policy: lr(i) = smooth(min(i, smooth_until)) * jump_gamma ^ #{j <= i}.

    A smooth Caffe policy (step, exp or inv) until `smooth_until`, then held, and multiplied
    by `jump_gamma` at each iteration of `jump_at`.
    """

    def __init__(self, smooth, smooth_until, jump_gamma=0.1, jump_at=(), iter_size=1):
        if isinstance(smooth, dict):
            smooth = keras.saving.deserialize_keras_object(smooth)
        self.smooth = smooth
        self.smooth_until = int(smooth_until)
        self.jump_gamma = float(jump_gamma)
        self.jump_at = [int(j) for j in jump_at]
        self.iter_size = int(iter_size)

    def __call__(self, step):
        iteration = _iteration(step, self.iter_size)
        held = self.smooth.rate(ops.minimum(iteration, self.smooth_until))
        jumps = sum((ops.cast(iteration >= j, "float32") for j in self.jump_at),
                    ops.zeros((), "float32"))
        return held * ops.power(self.jump_gamma, jumps)

    def get_config(self):
        return {"smooth": keras.saving.serialize_keras_object(self.smooth),
                "smooth_until": self.smooth_until, "jump_gamma": self.jump_gamma,
                "jump_at": self.jump_at, "iter_size": self.iter_size}


@keras.saving.register_keras_serializable(package="kerasbn")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Scales `schedule` by (i + 1) / warmup_iter for the first `warmup_iter` iterations."""

    def __init__(self, schedule, warmup_iter, iter_size=1):
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule = schedule
        self.warmup_iter = int(warmup_iter)
        self.iter_size = int(iter_size)

    def __call__(self, step):
        iteration = ops.cast(_iteration(step, self.iter_size), "float32")
        return self.schedule(step) * ops.minimum(1.0, (iteration + 1.0) / self.warmup_iter)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "warmup_iter": self.warmup_iter, "iter_size": self.iter_size}


@keras.saving.register_keras_serializable(package="kerasbn")
class PolynomialWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """arcface_torch's PolynomialLRWarmup as its training loop steps it (the scheduler stepped
    after each optimizer step, from its construction's step 0): the rate of update i is

        base                                      i = 0 (its quirk: the full rate first)
        base * i / w                              1 <= i <= w
        base * (1 - (min(i, T) - w) / (T - w)) ** power          i > w

    with w `warmup_iter` and T `max_iter`; its chained form multiplies to the same."""

    def __init__(self, base_lr, warmup_iter, max_iter, power=1.0, iter_size=1):
        self.base_lr, self.power = float(base_lr), float(power)
        self.warmup_iter, self.max_iter = int(warmup_iter), int(max_iter)
        self.iter_size = int(iter_size)

    def __call__(self, step):
        i = ops.cast(_iteration(step, self.iter_size), "float32")
        w, total = float(self.warmup_iter), float(self.max_iter)
        warm = self.base_lr * i / max(w, 1.0)
        decay = self.base_lr * ops.power(
            ops.maximum(1.0 - (ops.minimum(i, total) - w) / (total - w), 0.0), self.power)
        rate = ops.where(i <= w, warm, decay)
        return ops.where(i == 0, self.base_lr * ops.ones_like(i), rate)

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_iter": self.warmup_iter,
                "max_iter": self.max_iter, "power": self.power, "iter_size": self.iter_size}


def scale_to_run(value, max_iter, written_for=STUDY_MAX_ITER):
    """An iteration of a schedule written for `written_for` iterations (the study's 420,000)
    scaled to a run of `max_iter`: docs/reference.md section 1."""
    return max(1, round(value * max_iter / written_for))


def study_policy(name, base_lr, max_iter, iter_size=1):
    """The study's named policies, their iterations scaled to `max_iter`."""
    scale = lambda v: scale_to_run(v, max_iter)
    if name == "long_step":
        return CaffePolicy("multistep", base_lr, 0.1, stepvalues=[scale(150_000),
                                                                   scale(300_000)],
                           iter_size=iter_size)
    if name == "short_step":
        return CaffePolicy("step", base_lr, 0.9, stepsize=scale(10_000), iter_size=iter_size)
    if name == "multistep_no_dropout":
        smooth = CaffePolicy("step", base_lr, 0.9, stepsize=scale(10_000), iter_size=iter_size)
        return StepwiseThenJump(smooth, scale(150_000), 0.1, [scale(240_000), scale(330_000)],
                                iter_size=iter_size)
    raise ValueError(f"unknown study policy {name!r}; one of {', '.join(STUDY_POLICIES)}")


def scaled(c):
    """`c` with its iteration values (stepsize, stepvalue, smooth_until, jump_at, and nothing
    else) written for a run of `schedule_iters` iterations scaled to its `max_iter`, by the
    rule docs/reference.md scales the study's schedule with; `c` itself without schedule_iters."""
    if not c.schedule_iters:
        return c
    scale = lambda v: scale_to_run(v, c.max_iter, c.schedule_iters)
    return dataclasses.replace(c, stepsize=scale(c.stepsize),
                               stepvalue=[scale(v) for v in c.stepvalue],
                               smooth_until=scale(c.smooth_until),
                               jump_at=[scale(v) for v in c.jump_at], schedule_iters=0)


def make_schedule(c):
    """The schedule a `ScheduleConfig` asks for."""
    c = scaled(c)
    if c.lr_policy in STUDY_POLICIES:
        schedule = study_policy(c.lr_policy, c.base_lr, c.max_iter, c.iter_size)
    elif c.lr_policy == ARCFACE_POLICY:
        return PolynomialWarmup(c.base_lr, c.warmup_iter, c.max_iter, c.power, c.iter_size)
    elif c.lr_policy == "stepwise_then_jump":
        smooth = CaffePolicy(c.smooth_policy, c.base_lr, c.gamma, c.power, c.stepsize,
                             iter_size=c.iter_size)
        schedule = StepwiseThenJump(smooth, c.smooth_until, c.jump_gamma, c.jump_at,
                                    iter_size=c.iter_size)
    else:
        schedule = CaffePolicy(c.lr_policy, c.base_lr, c.gamma, c.power, c.stepsize,
                               c.stepvalue, c.max_iter, c.iter_size)
    if c.warmup_iter:
        schedule = LinearWarmup(schedule, c.warmup_iter, c.iter_size)
    return schedule


def rates(schedule, iterations):
    """The schedule's learning rate at each iteration of `iterations` (numpy float array)."""
    iter_size = getattr(schedule, "iter_size", 1)
    steps = np.asarray(iterations, np.int64) * iter_size
    return np.asarray(keras.ops.convert_to_numpy(schedule(steps)), np.float64)
