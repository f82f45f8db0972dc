"""--strategy: the same run on one device and on several replicas (logical CPU devices stand
in for GPUs, in subprocesses: devices cannot be split once TensorFlow has started)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import train_args
from kerasbn.run_dir import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(data, run_dir, *extra, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "KERASBN_FAULT"}
    if fault:
        env["KERASBN_FAULT"] = fault
    args = train_args(data, run_dir, max_iter=20, norm="sync", snapshot=10)
    return subprocess.run([sys.executable, "-m", "kerasbn.train", *args, *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True)


def _last(run_dir):
    return RunDir(run_dir).read_metrics()[-1]


@pytest.fixture(scope="module")
def one_device(small_data, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("one_device"))
    done = _train(small_data, run_dir)
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.mark.parametrize("first, then", [
    ([], ["--strategy=mirrored", "--cpu_devices=2"]),
    (["--strategy=mirrored", "--cpu_devices=2"], ["--strategy=one_device"]),
])
def test_a_run_resumes_under_another_strategy_and_ends_where_one_device_does(
        small_data, one_device, tmp_path, first, then):
    run_dir = str(tmp_path / "run")
    stopped = _train(small_data, run_dir, *first, fault="iteration:10:SIGTERM")
    assert stopped.returncode == 128 + 15, stopped.stderr
    resumed = _train(small_data, run_dir, *then)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    # Synchronised BN over the same global batches: only the order of float sums differs
    # (the replicas' gradients are added by an all-reduce), amplified by 20 updates at
    # base_lr 0.02 (measured: 1e-4 one way, 1.4e-3 the other); the test loss also goes
    # through the moving statistics (measured up to 1.1e-2 apart on this tiny test split).
    want, got = _last(one_device), _last(run_dir)
    assert got["iteration"] == 20
    assert got["train_loss"] == pytest.approx(want["train_loss"], abs=3e-3)
    assert got["test_loss"] == pytest.approx(want["test_loss"], abs=3e-2)
    with open(RunDir(run_dir).config_json) as f:
        distribution = json.load(f)["distribution"]
    replicas = 2 if "--cpu_devices=2" in then else 1
    assert distribution["replicas"] == replicas
    assert distribution["per_replica_batch"] == 16 // replicas
    if replicas == 2:
        assert ("MirroredStrategy: 2 replicas of 8 images per global batch of 16; BN "
                "statistics synchronised across replicas") in resumed.stdout


def test_a_global_batch_that_does_not_split_over_the_replicas_is_one_error(small_data,
                                                                          tmp_path):
    done = _train(small_data, str(tmp_path / "odd"), "--strategy=mirrored", "--cpu_devices=3")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --batch_size=16 (the global batch) does not split evenly over 3 replicas; "
        "give a multiple of 3")
