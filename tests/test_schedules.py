import dataclasses

import keras
import numpy as np
import pytest

from kerasbn.optim import schedules

ITERS = np.array([0, 1, 2, 99, 100, 101, 149, 150, 151, 299, 300, 301, 999, 1000])
FORMULAS = {
    "fixed": lambda i: 0.1 * np.ones_like(i, float),
    "step": lambda i: 0.1 * 0.5 ** np.floor(i / 100),
    "exp": lambda i: 0.1 * 0.5 ** i.astype(float),
    "inv": lambda i: 0.1 * (1 + 0.5 * i) ** -0.75,
    "multistep": lambda i: 0.1 * 0.5 ** ((i >= 150).astype(int) + (i >= 300)),
    "poly": lambda i: 0.1 * (1 - i / 1000) ** 0.75,
    "sigmoid": lambda i: 0.1 / (1 + np.exp(-0.5 * (i - 100))),
}


@pytest.mark.parametrize("policy", sorted(FORMULAS))
def test_caffe_policies_match_their_formulas(policy):
    schedule = schedules.CaffePolicy(policy, 0.1, gamma=0.5, power=0.75, stepsize=100,
                                     stepvalues=[150, 300], max_iter=1000)
    np.testing.assert_allclose(schedules.rates(schedule, ITERS), FORMULAS[policy](ITERS),
                               rtol=1e-5, atol=1e-30)


def test_multistep_boundary_is_inclusive_like_caffe():
    schedule = schedules.CaffePolicy("multistep", 1.0, 0.1, stepvalues=[10])
    assert schedules.rates(schedule, [9, 10]).tolist() == pytest.approx([1.0, 0.1])


def test_stepwise_then_jump_formula():
    smooth = schedules.CaffePolicy("step", 0.01, 0.9, stepsize=10)
    schedule = schedules.StepwiseThenJump(smooth, 150, 0.1, [240, 330])
    i = np.arange(0, 421)
    expected = 0.01 * 0.9 ** np.floor(np.minimum(i, 150) / 10) * 0.1 ** (
        (i >= 240).astype(int) + (i >= 330))
    np.testing.assert_allclose(schedules.rates(schedule, i), expected, rtol=1e-5)


def test_study_multistep_no_dropout_curve_at_full_scale():
    schedule = schedules.study_policy("multistep_no_dropout", 0.01, 420_000)
    got = schedules.rates(schedule, [0, 149_999, 150_000, 239_999, 240_000, 330_000, 420_000])
    np.testing.assert_allclose(
        got, [1e-2, 0.01 * 0.9 ** 14, 2.0589e-3, 2.0589e-3, 2.0589e-4, 2.0589e-5, 2.0589e-5],
        rtol=1e-4)


def test_study_policies_scale_to_the_run_length():
    short = schedules.study_policy("multistep_no_dropout", 0.01, 4200)
    assert (short.smooth.stepsize, short.smooth_until, short.jump_at) == (100, 1500, [2400, 3300])
    long_step = schedules.study_policy("long_step", 0.01, 800)
    assert long_step.stepvalues == [round(150_000 * 800 / 420_000), round(300_000 * 800 / 420_000)]
    tiny = schedules.study_policy("short_step", 0.01, 10)
    assert tiny.stepsize == 1  # max(1, round(...))


def test_warmup_and_iter_size():
    base = schedules.CaffePolicy("fixed", 0.4, iter_size=2)
    warm = schedules.LinearWarmup(base, 4, iter_size=2)
    steps = np.arange(0, 12)  # optimizer steps: 2 batches per iteration
    np.testing.assert_allclose(keras.ops.convert_to_numpy(warm(steps)),
                               0.4 * np.minimum(1, (steps // 2 + 1) / 4), rtol=1e-6)


@pytest.mark.parametrize("schedule", [
    schedules.CaffePolicy("inv", 0.1, 0.5, 0.75, iter_size=3),
    schedules.StepwiseThenJump(schedules.CaffePolicy("exp", 0.1, 0.99), 50, 0.2, [60, 70]),
    schedules.LinearWarmup(schedules.study_policy("short_step", 0.05, 1000), 20),
    schedules.PolynomialWarmup(0.1, 5, 40, 2.0),
])
def test_serialization_round_trip(schedule, tmp_path):
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    np.testing.assert_allclose(schedules.rates(again, ITERS), schedules.rates(schedule, ITERS))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9), "mse")
    model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    restored = loaded.optimizer._learning_rate
    assert type(restored) is type(schedule)
    np.testing.assert_allclose(schedules.rates(restored, ITERS), schedules.rates(schedule, ITERS))


@pytest.mark.parametrize("kw,message", [
    (dict(stepvalue=[300, 200]), "--stepvalue"),
    (dict(lr_policy="stepwise_then_jump", smooth_until=100, jump_at=[50]), "--jump_at=50"),
    (dict(gamma=-0.1), "--gamma=-0.1 is negative.*multistep"),
    (dict(lr_policy="inv", gamma=-0.001), "--lr_policy=inv rates negative or undefined"),
    (dict(lr_policy="stepwise_then_jump", smooth_policy="exp", gamma=-0.5, jump_at=[200000]),
     "--lr_policy=exp"),
    (dict(lr_policy="long_step", schedule_iters=800), "already scale from 420,000"),
    (dict(base_lr=-1), "--base_lr"),
    (dict(lr_policy="step", stepsize=0), "--stepsize"),
    (dict(lr_policy="poly", max_iter=0), "--max_iter"),
    (dict(lr_policy="cosine"), "--lr_policy=cosine"),
    (dict(lr_policy="poly_warmup", warmup_iter=10, max_iter=10), "--warmup_iter=10 leaves"),
])
def test_invalid_combinations_are_refused(kw, message):
    with pytest.raises(schedules.ScheduleError, match=message):
        schedules.ScheduleConfig(**kw)


def test_make_schedule_reads_a_schedule_config():
    config = schedules.ScheduleConfig(lr_policy="multistep_no_dropout", base_lr=0.01,
                                      max_iter=4200, warmup_iter=10)
    schedule = schedules.make_schedule(config)
    assert isinstance(schedule, schedules.LinearWarmup)
    # Warm-up: (i + 1) / 10 of the study's curve, whose stepsize scales to 100 at 4200.
    assert schedules.rates(schedule, [0, 1500]).tolist() == pytest.approx(
        [0.001, 0.01 * 0.9 ** 15], rel=1e-5)


def test_sigmoid_takes_a_negative_gamma_and_decays_as_caffe():
    # Caffe: base_lr / (1 + exp(-gamma * (iter - stepsize))); gamma < 0 decays past stepsize.
    config = schedules.ScheduleConfig(lr_policy="sigmoid", base_lr=0.1, gamma=-0.05,
                                      stepsize=300, max_iter=600)
    got = schedules.rates(schedules.make_schedule(config), [0, 300, 599])
    want = [0.1 / (1 + np.exp(0.05 * (i - 300))) for i in (0, 300, 599)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] > got[1] > got[2] and got[1] == pytest.approx(0.05)


def test_schedule_iters_scales_a_written_schedule_to_max_iter():
    # The quickstart's x0.1 at 600 of 800 moves to 1,125 when a user runs 1,500.
    config = schedules.ScheduleConfig(lr_policy="multistep", base_lr=0.02, stepvalue=[600],
                                      max_iter=1500, schedule_iters=800)
    got = schedules.rates(schedules.make_schedule(config), [1124, 1125])
    np.testing.assert_allclose(got, [0.02, 0.002], rtol=1e-6)
    same = dataclasses.replace(config, max_iter=800)
    np.testing.assert_allclose(schedules.rates(schedules.make_schedule(same), [599, 600]),
                               [0.02, 0.002], rtol=1e-6)
    jump = schedules.ScheduleConfig(lr_policy="stepwise_then_jump", stepsize=100,
                                    smooth_until=400, jump_at=[600], max_iter=400,
                                    schedule_iters=800)
    assert schedules.scaled(jump) == dataclasses.replace(
        jump, stepsize=50, smooth_until=200, jump_at=[300], schedule_iters=0)


def _polynomial_lr_warmup(torch):
    """arcface_torch's PolynomialLRWarmup (recognition/arcface_torch/lr_scheduler.py at
    insightface HEAD, July 2026), transcribed: get_lr's chained form, as it runs."""
    class PolynomialLRWarmup(torch.optim.lr_scheduler._LRScheduler):
        def __init__(self, optimizer, warmup_iters, total_iters=5, power=1.0):
            super().__init__(optimizer, last_epoch=-1)
            self.total_iters, self.power, self.warmup_iters = total_iters, power, warmup_iters

        def get_lr(self):
            if self.last_epoch == 0 or self.last_epoch > self.total_iters:
                return [group["lr"] for group in self.optimizer.param_groups]
            if self.last_epoch <= self.warmup_iters:
                return [base * self.last_epoch / self.warmup_iters for base in self.base_lrs]
            step, w, t = self.last_epoch, self.warmup_iters, self.total_iters
            factor = ((1.0 - (step - w) / (t - w)) / (1.0 - (step - 1 - w) / (t - w))) \
                ** self.power
            return [group["lr"] * factor for group in self.optimizer.param_groups]
    return PolynomialLRWarmup


@pytest.mark.parametrize("warmup, total, power", [(4, 30, 1.0), (0, 25, 2.0), (7, 12, 0.5)])
def test_poly_warmup_is_arcface_torchs_polynomial_lr_warmup_at_every_iteration(warmup, total,
                                                                               power):
    """The rate of each update as train_v2.py steps the scheduler (after each optimizer
    step), against PyTorch running a transcription of it; iteration 0 at the full rate."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference here: pip install "
                                                "-e '.[torch]'")
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = _polynomial_lr_warmup(torch)(optimizer, warmup, total, power)
    theirs = []
    for _ in range(total + 3):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    config = schedules.ScheduleConfig(base_lr=0.1, lr_policy="poly_warmup", warmup_iter=warmup,
                                      max_iter=total, power=power)
    ours = schedules.rates(schedules.make_schedule(config), range(total + 3))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-9)
    assert ours[0] == pytest.approx(0.1)


@pytest.mark.slow
def test_a_poly_warmup_run_logs_arcface_torchs_rate_at_every_iteration(small_data, tmp_path):
    """The rate each test records (that of the update after it) is PolynomialLRWarmup's."""
    import json

    from conftest import run_train, train_args
    run_dir = tmp_path / "run"
    run_train(train_args(small_data, str(run_dir), lr_policy="poly_warmup", warmup_iter=3,
                         max_iter=9, power=2.0, base_lr=0.05, test_interval=1, snapshot=9))
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    want = [0.05] + [0.05 * i / 3 for i in (1, 2, 3)] + [
        0.05 * (1 - (i - 3) / 6) ** 2 for i in range(4, 10)]
    np.testing.assert_allclose([e["lr"] for e in logged], want[:len(logged)], rtol=1e-6,
                               atol=1e-12)
    assert [e["iteration"] for e in logged] == list(range(10))
