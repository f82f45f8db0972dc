"""--strategy: the same run on one device and on several replicas (logical CPU devices stand
in for GPUs, in subprocesses: devices cannot be split once TensorFlow has started)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import train_args

from kerasbn.runs.run_dir import RunDir

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_global_batch_that_does_not_split_over_the_replicas_is_one_error(small_data,
                                                                          tmp_path):
    done = _train(small_data, str(tmp_path / "odd"), "--strategy=mirrored", "--cpu_devices=3")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --batch_size=16 (the global batch) does not split evenly over 3 replicas; "
        "give a multiple of 3")


def _baseline_args(data, run_dir):
    # No dropout: each replica draws its own masks, so only a deterministic network can match.
    return train_args(data, run_dir, model="baseline", dropout=0, max_iter=20,
                      widths="16,16,32,24,48,40,64,80")


@pytest.mark.slow
def test_two_local_workers_train_as_one_process_and_only_the_chief_writes(tmp_path):
    from conftest import make_synth

    from kerasbn import local_cluster
    data = str(tmp_path / "data")
    # One shard for two workers: each keeps every other record of the one stream, so the
    # two halves of each global batch are the one process's batch (pipeline's by-record
    # sharding; the file-sharding case is tested in test_pipeline).
    make_synth(data, shard_size=10_000)
    single = str(tmp_path / "single")
    done = subprocess.run([sys.executable, "-m", "kerasbn.train", *_baseline_args(data, single)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # The cluster's own temporary folder, so other processes' files there do not count.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    chief = str(tmp_path / "chief")
    done = subprocess.run([sys.executable, "-m", "kerasbn.local_cluster", "--workers=2", "--",
                           *_baseline_args(data, chief)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr
    assert "CollectiveAllReduceStrategy: 2 replicas of 8 images per global batch of 16" in \
        done.stdout and "fewer training shards than the 2 workers" in done.stdout
    # Same global batches, gradients all-reduced in another order: float32 rounding only.
    for want, got in zip(RunDir(single).read_metrics(), RunDir(chief).read_metrics()):
        assert got["iteration"] == want["iteration"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=2e-4)
        assert got["test_loss"] == pytest.approx(want["test_loss"], abs=2e-4)
    assert os.listdir(scratch) == []  # the other worker's scratch copy of the run is gone
    import tensorflow as tf
    served = tf.saved_model.load(RunDir(chief).export)
    assert served.signatures["serving_default"](
        images=tf.zeros([1, 50, 50, 1], tf.uint8))["probabilities"].shape == (1, 6)
    assert local_cluster.tf_config([1, 2], 1) == (
        '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, '
        '"task": {"type": "worker", "index": 1}}')


@pytest.mark.slow
def test_a_failing_worker_stops_the_cluster_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kerasbn.local_cluster", "--workers=2", "--",
                           f"--data_dir={tmp_path / 'missing'}", f"--run_dir={tmp_path / 'r'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "stopped the other workers" in done.stderr.strip().splitlines()[-1]


class _Exited:
    """A worker process that has exited with `code` (None: still running)."""

    def __init__(self, code):
        self.code = code

    def poll(self):
        return self.code

    def wait(self, timeout=None):
        return self.code

    def terminate(self):
        self.code = -15


def test_a_dead_worker_is_named_by_its_own_line_not_the_chiefs_abort_dump(tmp_path, capsys):
    from kerasbn import local_cluster
    chief, other = tmp_path / "worker0.log", tmp_path / "worker1.log"
    chief.write_text(
        "E0000 00:00:1796 collective_ops.cc:123] Collective ops is aborted by: peer down\n"
        "Traceback (most recent call last):\n  File \"train.py\", line 1, in <module>\n"
        "tensorflow.python.framework.errors_impl.UnavailableError: Collective ops is aborted\n")
    other.write_text("W0000 00:00:1796 some.cc:1] chatter\nKilled\n")
    code = local_cluster.supervise([(_Exited(1), str(chief)), (_Exited(137), str(other))])
    err = capsys.readouterr().err
    assert code == 137
    assert err.splitlines() == ["worker 1: Killed", "error: worker 1 exited with status 137; "
                                                    "stopped the other workers"]
    other.write_text("error: --data_dir=/x: manifest.json not found\n")
    assert local_cluster.supervise([(_Exited(None), str(chief)), (_Exited(1), str(other))]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "worker 1: error: --data_dir=/x: manifest.json not found")
