import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags as absl_flags

from kerasbn import flags as train_flags
from kerasbn import schedules

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


def _schedule_flags(*args):
    absl_flags.FLAGS.unparse_flags()
    absl_flags.FLAGS(["x", *args])
    return train_flags.schedule_config()


@pytest.mark.parametrize("args,message", [
    (["--stepvalue=300", "--stepvalue=200"], "--stepvalue"),
    (["--lr_policy=stepwise_then_jump", "--smooth_until=100", "--jump_at=50"], "--jump_at=50"),
    (["--gamma=-0.1"], "negative rates"),
    (["--base_lr=-1"], "--base_lr"),
    (["--lr_policy=step", "--stepsize=0"], "--stepsize"),
    (["--lr_policy=poly", "--max_iter=0"], "--max_iter"),
])
def test_invalid_combinations_are_refused(args, message):
    with pytest.raises(train_flags.FlagError, match=message):
        _schedule_flags(*args)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kerasbn.schedules", *args],
                          capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def test_command_prints_and_plots(tmp_path):
    flagfile = tmp_path / "a.flags"
    flagfile.write_text("--lr_policy=multistep_no_dropout\n--base_lr=0.01\n--max_iter=4200\n")
    done = _cli(f"--flagfile={flagfile}", "--print_every=1500")
    assert done.returncode == 0, done.stderr
    lines = [l.split() for l in done.stdout.splitlines()]
    assert [int(i) for i, _ in lines] == [0, 1500, 3000]
    assert float(lines[1][1]) == pytest.approx(0.01 * 0.9 ** 15, rel=1e-4)
    other = tmp_path / "b.flags"
    other.write_text("--lr_policy=long_step\n--max_iter=4200\n")
    plotted = _cli(f"--plot={tmp_path / 'lr.png'}", str(flagfile), str(other))
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "lr.png").stat().st_size > 10_000
    bad = _cli("--stepvalue=5", "--stepvalue=3")
    assert bad.returncode != 0 and "--stepvalue" in bad.stderr
