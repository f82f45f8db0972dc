"""Calls of several iterations (--steps_per_execution), XLA (--jit_compile) and mixed_float16's
dynamic loss scaling: every iteration event stays on its iteration, and the run is the one
single iterations train."""

import os
import signal

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_train, train_args
from test_train import _error, _final_state, _metrics, _scalars, _train_process

from kerasbn.runs.run_dir import RunDir

TIMING = ("wall_time", "images_per_sec", "test_seconds", "verify_seconds")


def _records(run_dir):
    return [{k: v for k, v in e.items() if k not in TIMING} for e in _metrics(run_dir)]


def _args(small_data, run_dir, **extra):
    settings = {"max_iter": 20, "snapshot": 10, "test_interval": 5, "display": 5,
                "deterministic": "true", **extra}
    return train_args(small_data, str(run_dir), **settings)


def _position(run_dir):
    reader = tf.train.load_checkpoint(RunDir(str(run_dir)).checkpoints)
    name = next(n for n in reader.get_variable_to_shape_map() if n.startswith("position"))
    return int(reader.get_tensor(name))


@pytest.mark.slow
def test_calls_of_five_iterations_train_the_run_of_single_ones_across_a_kill(small_data,
                                                                             tmp_path):
    assert _train_process(_args(small_data, tmp_path / "single")).returncode == 0
    five = _args(small_data, tmp_path / "five", steps_per_execution=5)
    killed = _train_process(five, "iteration:15")  # after the checkpoint at 10
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _train_process(five).returncode == 0
    assert [e["iteration"] for e in _metrics(tmp_path / "five")] == [0, 5, 10, 15, 20]
    assert _records(tmp_path / "five") == _records(tmp_path / "single")
    a, b = _final_state(str(tmp_path / "single")), _final_state(str(tmp_path / "five"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert _position(tmp_path / "five") == 20


def test_events_off_a_multiple_of_steps_per_execution_are_refused(small_data, tmp_path):
    message = _error(_args(small_data, tmp_path / "run", steps_per_execution=4))
    assert message == ("error: --steps_per_execution=4 runs 4 iterations per call, so every "
                       "iteration event must fall on a multiple of it: --test_interval=5, "
                       "--display=5, --snapshot=10 are not; change them or "
                       "--steps_per_execution")
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_updates_skipped_by_loss_scaling_leave_the_events_on_their_iterations(
        small_data, tmp_path, capsys):
    # A start at 2^21 overflows this network's float16 gradients (2^19 does not), so the
    # first updates are skipped while the scale halves: a call of five iterations comes back
    # short and is caught up. (float16 is emulated on CPUs: seconds a step, so few steps.)
    scaled = dict(max_iter=5, snapshot=5, batch_size=8, precision="mixed_float16",
                  initial_loss_scale=2.0 ** 21)
    run_train(_args(small_data, tmp_path / "single", **scaled))
    run_train(_args(small_data, tmp_path / "five", steps_per_execution=5, **scaled))
    assert "loss scale" in capsys.readouterr().out
    assert [e["iteration"] for e in _metrics(tmp_path / "five")] == [0, 5]
    # The displayed training loss is a mean since the last display or call of fit, and the
    # catch-up calls fit again, so only the tests and the weights are compared.
    tests = lambda run: [{k: v for k, v in e.items() if k != "train_loss"}
                         for e in _records(run)]
    assert tests(tmp_path / "five") == tests(tmp_path / "single")
    a, b = _final_state(str(tmp_path / "single")), _final_state(str(tmp_path / "five"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    skipped = _position(tmp_path / "five") - 5
    assert skipped >= 1 and skipped == _position(tmp_path / "single") - 5
    logged = _scalars(str(tmp_path / "five" / "tensorboard" / "train"), "loss_scale")
    # Each skip halved the scale; none of the updates since was 2,000 away from doubling it.
    assert logged == {5: 2.0 ** (21 - skipped)}


@pytest.mark.slow
def test_xla_trains_the_same_network_within_float_noise(small_data, tmp_path):
    # Separate processes: op determinism, which turns XLA off, stays on in a process once a
    # deterministic run has set it.
    for run, extra in (("plain", {}), ("xla", {"jit_compile": "true"})):
        args = train_args(small_data, str(tmp_path / run), max_iter=10, snapshot=10,
                          test_interval=5, display=5, **extra)
        done = _train_process(args)
        assert done.returncode == 0, done.stderr
    assert "jit_compile" not in done.stderr
    plain, xla = _metrics(tmp_path / "plain"), _metrics(tmp_path / "xla")
    assert [e["iteration"] for e in xla] == [0, 5, 10]
    np.testing.assert_allclose([e["test_loss"] for e in xla],
                               [e["test_loss"] for e in plain], rtol=1e-3)


def test_xla_with_op_determinism_is_one_line(small_data, tmp_path):
    message = _error(_args(small_data, tmp_path / "run", jit_compile="true"))
    assert message.startswith("error: --jit_compile and --deterministic exclude each other")


@pytest.mark.parametrize("extra", [{"jit_compile": "true", "deterministic": "false"},
                                   {"steps_per_execution": 5}])
def test_xla_and_calls_of_several_iterations_are_refused_under_multi_worker(small_data,
                                                                           tmp_path, extra):
    message = _error(_args(small_data, tmp_path / "run", strategy="multi_worker", **extra))
    assert message.startswith("error: --jit_compile and --steps_per_execution apply to Keras's "
                              "fit")
    assert "\n" not in message
