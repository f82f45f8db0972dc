import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_synth, run_train, train_args
from test_pipeline import _damaged
from test_run_dir import lock_held_elsewhere

from data_tools import synth
from kerasbn import train
from kerasbn.runs.run_dir import RunDir
from kerasbn.training import callbacks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics(run_dir):
    return RunDir(run_dir).read_metrics()


def _error(args):
    with pytest.raises(SystemExit) as info:
        run_train(args)
    return str(info.value)


def _tags(event_dir):
    tags = set()
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def _scalars(event_dir, tag):
    """{step: value} of one scalar over every event file in `event_dir`."""
    values = {}
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


@pytest.mark.slow
def test_run_writes_everything_and_loss_falls(finished_run, capsys):
    entries = _metrics(finished_run)
    assert [e["iteration"] for e in entries] == [0, 10, 20, 30, 40]
    assert set(entries[1]) == {"iteration", "wall_time", "lr", "train_loss", "test_loss",
                               "test_top1", "test_top5", "images_per_sec", "test_seconds"}
    assert all(e["test_seconds"] > 0 for e in entries)
    assert entries[-1]["train_loss"] < entries[1]["train_loss"]
    assert entries[-1]["test_top1"] > 1 / 6
    summary = json.load(open(os.path.join(finished_run, "summary.json")))
    assert summary["final_iteration"] == 40 and summary["train_images_per_sec"] > 0
    assert summary["best_test_top1"] == max(e["test_top1"] for e in entries)
    flagfile = open(os.path.join(finished_run, "flags.txt")).read()
    assert "--max_iter=40" in flagfile and "--model=bn" in flagfile
    assert {"loss", "learning_rate", "images_per_sec"} <= _tags(
        os.path.join(finished_run, "tensorboard", "train"))
    assert {"top1", "top5", "loss"} <= _tags(os.path.join(finished_run, "tensorboard", "test"))


@pytest.mark.slow
def test_interrupted_run_resumes_at_the_right_iteration_and_rate(small_data, tmp_path,
                                                                 monkeypatch, capsys):
    policy = dict(lr_policy="stepwise_then_jump", stepsize=5, gamma=0.5, smooth_until=12,
                  jump_at=25, max_iter=30)
    whole = str(tmp_path / "whole")
    run_train(train_args(small_data, whole, **policy))
    cut = str(tmp_path / "cut")
    real_snapshot = callbacks.Snapshot.on_iteration

    def snapshot_then_die(self, iteration, logs):
        real_snapshot(self, iteration, logs)
        if iteration == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.Snapshot, "on_iteration", snapshot_then_die)
    with pytest.raises(SystemExit, match="130"):
        run_train(train_args(small_data, cut, **policy))
    monkeypatch.setattr(callbacks.Snapshot, "on_iteration", real_snapshot)
    capsys.readouterr()
    run_train(train_args(small_data, cut, **policy))
    assert "resuming from" in capsys.readouterr().out
    got = [(e["iteration"], e["lr"]) for e in _metrics(cut)]
    want = [(e["iteration"], e["lr"]) for e in _metrics(whole)]
    assert got == want
    # lr(i) = 0.02 * 0.5 ^ floor(min(i, 12) / 5) * 0.1 ^ [i >= 25]
    assert [lr for _, lr in got] == pytest.approx([0.02, 0.005, 0.005, 0.0005])
    logged = lambda run: _scalars(os.path.join(run, "tensorboard", "train"), "learning_rate")
    assert logged(cut) == logged(whole)
    assert sorted(logged(cut)) == [5, 10, 15, 20, 25, 30]


@pytest.mark.slow
def test_weights_start_from_the_given_run(finished_run, small_data, tmp_path):
    run_train(train_args(small_data, str(tmp_path / "a"), max_iter=10,
                    weights=finished_run))
    first = _metrics(str(tmp_path / "a"))[0]
    final = _metrics(finished_run)[-1]
    assert first["iteration"] == 0
    assert first["test_top1"] == pytest.approx(final["test_top1"])
    assert first["test_loss"] == pytest.approx(final["test_loss"], rel=1e-4)
    run_train(train_args(small_data, str(tmp_path / "b"), max_iter=10,
                    weights=os.path.join(finished_run, "export")))
    assert _metrics(str(tmp_path / "b"))[0]["test_loss"] == pytest.approx(
        final["test_loss"], rel=1e-4)


def test_test_interval_beyond_max_iter_is_refused(small_data, tmp_path):
    message = _error(train_args(small_data, str(tmp_path), max_iter=10, test_interval=20))
    assert "--test_interval=20" in message and "--max_iter=10" in message


def test_class_count_disagreeing_with_manifest_is_refused(small_data, tmp_path):
    message = _error(train_args(small_data, str(tmp_path), num_classes=10))
    assert "--num_classes=10" in message and "6 classes" in message


def test_image_size_disagreeing_with_manifest_is_refused(small_data, tmp_path):
    assert "--image_size=64" in _error(train_args(small_data, str(tmp_path), image_size=64))


def test_unloadable_weights_are_refused(small_data, tmp_path):
    (tmp_path / "empty").mkdir()
    message = _error(train_args(small_data, str(tmp_path / "run"), weights=str(tmp_path / "empty")))
    assert "holds nothing loadable" in message
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_run_dir_of_another_run_is_refused_unless_overwrite(finished_run, small_data, tmp_path):
    message = _error(train_args(small_data, finished_run, max_iter=40, base_lr=0.5))
    assert "--base_lr" in message and "--overwrite" in message
    assert len(_metrics(finished_run)) == 5


def test_missing_data_dir_is_named(tmp_path):
    message = _error(train_args(str(tmp_path / "nowhere"), str(tmp_path / "run")))
    assert "manifest.json not found" in message


def test_unknown_enum_value_is_refused(small_data, tmp_path):
    message = _error(train_args(small_data, str(tmp_path), precision="float8"))
    assert "--precision=float8" in message and "\n" not in message
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_runs_and_exports_float32(small_data, tmp_path, precision):
    run_dir = str(tmp_path / precision)
    run_train(train_args(small_data, run_dir, max_iter=10, test_interval=5, precision=precision))
    entries = _metrics(run_dir)
    assert [e["iteration"] for e in entries] == [0, 5, 10]
    assert all(np.isfinite(e["test_loss"]) for e in entries)
    out = tf.saved_model.load(os.path.join(run_dir, "export")).signatures["serving_default"](
        images=tf.zeros([2, 50, 50, 1], tf.uint8))
    assert out["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("solver_type", ["Nesterov", "AdamW"])
def test_iter_size_and_solver_types_train(small_data, tmp_path, solver_type, capsys):
    run_dir = str(tmp_path / solver_type)
    run_train(train_args(small_data, run_dir, max_iter=10, test_interval=5, iter_size=2,
                    solver_type=solver_type, base_lr=0.005, lr_policy="multistep_no_dropout"))
    assert "BN statistics still come from each batch" in capsys.readouterr().out
    entries = _metrics(run_dir)
    assert [e["iteration"] for e in entries] == [0, 5, 10]
    assert entries[-1]["test_loss"] < entries[0]["test_loss"]


@pytest.mark.slow
def test_stop_at_target_ends_the_run_and_a_rerun_stays_stopped(small_data, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    args = train_args(small_data, run_dir, max_iter=200, test_interval=5, snapshot=100,
                 target_accuracy=0.3, stop_at_target="true")
    run_train(args + ["--target_accuracy=0.25"])
    entries = _metrics(run_dir)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    last = entries[-1]["iteration"]
    assert last < 200 and entries[-1]["test_top1"] >= 0.3
    assert set(summary["targets"]) == {"0.3", "0.25"}
    assert summary["targets"]["0.3"]["iteration"] == last
    out = capsys.readouterr().out
    assert "target top-1 0.3: reached at iteration" in out
    assert _scalars(os.path.join(run_dir, "tensorboard", "test"), "iterations_to_0.3") == {
        last: float(last)}
    run_train(args + ["--target_accuracy=0.25"])
    assert _metrics(run_dir)[-1]["iteration"] == last


@pytest.mark.slow
def test_precise_bn_run(small_data, tmp_path):
    run_dir = str(tmp_path / "precise")
    run_train(train_args(small_data, run_dir, max_iter=10, test_interval=5, precise_bn=2))
    entries = _metrics(run_dir)
    assert [e["iteration"] for e in entries] == [0, 5, 10]
    assert all(np.isfinite(e["test_loss"]) for e in entries)


@pytest.mark.slow
def test_run_from_before_config_json_and_a_new_flag_still_resumes(finished_run, small_data):
    run = RunDir(finished_run)
    text, config = open(run.flags_txt).read(), open(run.config_json).read()
    try:
        os.remove(run.config_json)
        with open(run.flags_txt, "w") as f:
            f.write("".join(line + "\n" for line in text.splitlines()
                            if not line.startswith(("--precise_bn", "--nostop_at_target"))))
        run_train(train_args(small_data, finished_run, max_iter=40))
        assert len(_metrics(finished_run)) == 5
        assert json.load(open(run.config_json))["precise_bn"] == 0
        os.remove(run.config_json)
        assert "--base_lr" in _error(train_args(small_data, finished_run, max_iter=40, base_lr=0.5))
    finally:
        with open(run.flags_txt, "w") as f:
            f.write(text)
        with open(run.config_json, "w") as f:
            f.write(config)


@pytest.mark.slow
def test_a_resumed_run_may_track_other_targets(finished_run, small_data):
    path = os.path.join(finished_run, "flags.txt")
    text = open(path).read()
    try:
        run_train(train_args(small_data, finished_run, max_iter=40) + ["--target_accuracy=0.01",
                                                                   "--target_accuracy=0.02"])
        summary = json.load(open(os.path.join(finished_run, "summary.json")))
        assert set(summary["targets"]) == {"0.01", "0.02"}
        assert summary["targets"]["0.01"]["iteration"] >= 0
        assert "--target_accuracy=0.02" in open(path).read()
    finally:
        with open(path, "w") as f:
            f.write(text)


@pytest.mark.slow
def test_a_second_training_process_in_the_same_run_dir_is_refused(small_data, tmp_path,
                                                                  capsys):
    with lock_held_elsewhere(tmp_path) as pid:
        # The exit status tells a launcher the run is claimed (train.BUSY_EXIT).
        assert _error(train_args(small_data, str(tmp_path))) == str(train.BUSY_EXIT)
    message = capsys.readouterr().err
    assert f"in use by another training process (pid {pid})" in message
    assert message.count("\n") == 1 and not os.path.exists(tmp_path / "config.json")


def test_a_run_dir_that_is_or_holds_the_dataset_is_refused(small_data, tmp_path):
    before = sorted(os.listdir(small_data))
    for run_dir in (small_data, os.path.dirname(small_data)):
        message = _error(train_args(small_data, run_dir, overwrite="true"))
        assert "must not contain its data" in message
    assert sorted(os.listdir(small_data)) == before


@pytest.mark.slow
def test_overwrite_deletes_only_what_a_run_wrote(small_data, tmp_path):
    run_dir = str(tmp_path / "run")
    run_train(train_args(small_data, run_dir, max_iter=10, test_interval=5, snapshot=5))
    run = tmp_path / "run"
    mine = ["notes.txt", "checkpoints/README.md", "export/client.py",
            "tensorboard/train/plot.png"]
    for path in mine:
        (run / path).write_text("mine")
    # A stale core of the earlier run: its network is gone, so it must go too.
    for name in ("export.onnx", "export.onnx.json"):
        (run / name).write_text("stale")
    run_train(train_args(small_data, run_dir, max_iter=10, test_interval=10, overwrite="true"))
    assert all((run / path).read_text() == "mine" for path in mine)
    assert not (run / "export.onnx").exists() and not (run / "export.onnx.json").exists()
    assert [e["iteration"] for e in _metrics(run_dir)] == [0, 10]
    assert sorted(os.listdir(run / "checkpoints")) == [
        "README.md", "best", "checkpoint", "ckpt-10.data-00000-of-00001", "ckpt-10.index"]


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_tests_iteration_0_once(small_data, tmp_path,
                                                                         monkeypatch):
    run_dir = str(tmp_path / "run")
    args = train_args(small_data, run_dir, max_iter=10, test_interval=5, snapshot=10)
    real = callbacks.ProgressDisplay.on_iteration

    def die_at_3(self, iteration, logs):
        if iteration == 3:
            raise KeyboardInterrupt
        real(self, iteration, logs)

    monkeypatch.setattr(callbacks.ProgressDisplay, "on_iteration", die_at_3)
    with pytest.raises(SystemExit, match="130"):
        run_train(args)
    monkeypatch.setattr(callbacks.ProgressDisplay, "on_iteration", real)
    assert [e["iteration"] for e in _metrics(run_dir)] == [0]
    run_train(args)
    assert [e["iteration"] for e in _metrics(run_dir)] == [0, 5, 10]


@pytest.mark.slow
def test_a_corrupt_shard_stops_training_by_name_or_is_skipped(tmp_path, capsys):
    data = tmp_path / "data"
    _, path = _damaged(data, "flipped")
    args = train_args(str(data), str(tmp_path / "run"), max_iter=5, test_interval=5,
                      snapshot=5)
    message = _error(args)
    assert message.startswith(f"error: {path} is corrupt after record 3 (corrupted record at")
    assert "--skip_corrupt_records" in message and "\n" not in message
    capsys.readouterr()
    run_train(args + ["--skip_corrupt_records"])
    assert f"{path} is short by 27 record(s)" in capsys.readouterr().out
    assert _metrics(str(tmp_path / "run"))[-1]["iteration"] == 5


def _train_process(args, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "KERASBN_FAULT"}
    if fault:
        env["KERASBN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "kerasbn.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def _final_state(run_dir):
    """Every tensor of the run's newest checkpoint but the wall time: weights, BN statistics,
    optimizer slots, iteration, data position."""
    reader = tf.train.load_checkpoint(RunDir(run_dir).checkpoints)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("wall_time", "save_counter", "_CHECKPOINTABLE"))}


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_ends_where_an_uninterrupted_run_does(small_data,
                                                                               tmp_path):
    args = lambda run: train_args(small_data, str(tmp_path / run), max_iter=20, snapshot=5,
                                  test_interval=5, deterministic="true", crop_pad=2,
                                  mirror="true")
    assert _train_process(args("whole")).returncode == 0
    os.makedirs(tmp_path / "cut" / "checkpoints" / "ckpt-15_temp")  # a killed write's leftover
    # Mid-interval, inside the checkpoint write at 10 (files written, index not), and after
    # the test at 15 but before its checkpoint.
    for fault in ("iteration:7", "checkpoint:10", "iteration:13", "iteration:15"):
        killed = _train_process(args("cut"), fault)
        assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr)
    assert _train_process(args("cut")).returncode == 0
    assert not os.path.exists(tmp_path / "cut" / "checkpoints" / "ckpt-15_temp")
    whole, cut = _metrics(str(tmp_path / "whole")), _metrics(str(tmp_path / "cut"))
    assert [e["iteration"] for e in cut] == [0, 5, 10, 15, 20]
    timing = ("wall_time", "images_per_sec", "test_seconds", "verify_seconds")
    strip = lambda entries: [{k: v for k, v in e.items() if k not in timing} for e in entries]
    assert strip(cut) == strip(whole)
    a, b = _final_state(str(tmp_path / "whole")), _final_state(str(tmp_path / "cut"))
    assert a.keys() == b.keys() and len(a) > 30
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    logged = lambda run: _scalars(os.path.join(tmp_path, run, "tensorboard", "train"),
                                  "learning_rate")
    assert logged("cut") == logged("whole")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_the_iteration_and_the_rerun_resumes_there(
        small_data, tmp_path, monkeypatch, capsys, name):
    run_dir = str(tmp_path / "run")
    args = train_args(small_data, run_dir, max_iter=20, test_interval=10, snapshot=10)
    monkeypatch.setenv("KERASBN_FAULT", f"iteration:7:{name}")
    with pytest.raises(SystemExit) as info:
        run_train(args)
    assert info.value.code == 128 + getattr(signal, name)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"stopped by {name} after iteration 7, checkpointed in "
                       f"{RunDir(run_dir).checkpoints}; rerun the same command to resume")
    assert tf.train.latest_checkpoint(RunDir(run_dir).checkpoints).endswith("ckpt-7")
    monkeypatch.delenv("KERASBN_FAULT")
    run_train(args)
    assert "resuming from" in capsys.readouterr().out
    assert [e["iteration"] for e in _metrics(run_dir)] == [0, 10, 20]


@pytest.mark.slow
def test_mistakes_around_the_run_dir_and_the_data_are_one_line(small_data, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    assert "is a file" in _error(train_args(small_data, str(tmp_path / "file")))
    data = tmp_path / "data"
    make_synth(data, identities=6)
    run_dir = str(tmp_path / "run")
    run_train(train_args(str(data), run_dir, max_iter=10, test_interval=10, snapshot=10))
    make_synth(data, identities=7, overwrite=True)  # rebuilt at the same path
    message = _error(train_args(str(data), run_dir, max_iter=10, test_interval=10,
                                snapshot=10))
    assert "--num_classes: 6 there, 7 now" in message and "\n" not in message
    other = train_args(str(data), str(tmp_path / "other"), max_iter=10, test_interval=10,
                       widths="8,8,8,8,8,8,16", weights=run_dir)
    message = _error(other)
    assert "is another network: conv1_1/kernel is (3, 3, 1, 16) there, (3, 3, 1, 8) here" \
        in message and "\n" not in message


@pytest.mark.slow
def test_verification_on_holdout_identities_is_recorded_at_the_tests_it_is_asked_for(
        small_data, tmp_path, capsys):
    data = str(tmp_path / "data")
    synth.build(data, 6, 20, 0.25, 50, 0, "raw", 32, False, holdout_identities=4, pairs=60)
    run_dir = str(tmp_path / "run")
    run_train(train_args(data, run_dir, max_iter=20, test_interval=10, verify_interval=20,
                         verify_flip="true", target="verify_auc:0.01"))
    entries = _metrics(run_dir)
    assert ["verify_acc" in e for e in entries] == [True, False, True]
    assert 0 <= entries[-1]["verify_acc"] <= 1 and 0 <= entries[-1]["verify_auc"] <= 1
    assert entries[-1]["verify_pairs"] == {"matched": 60, "mismatched": 60}
    assert entries[-1]["verify_seconds"] > 0
    assert entries[-1]["verify_tar@far=0.01"] is None  # 60 impostors cannot resolve 1e-2
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["final_verify"]["verify_acc"] == entries[-1]["verify_acc"]
    assert summary["targets"]["verify_auc:0.01"]["iteration"] == 0
    out = capsys.readouterr().out
    assert "verify iter 20: accuracy" in out and "target verify_auc 0.01: reached at" in out
    assert "verify_auc" in _tags(os.path.join(run_dir, "tensorboard", "test"))
    assert "--verify_split=holdout" in _error(train_args(
        small_data, str(tmp_path / "r2"), verify_split="holdout"))


@pytest.mark.parametrize("extra, message", [
    ({"verify_split": "none", "target": "verify_acc:0.9"},
     "--target=verify_acc:0.9 is a verification figure, but this run never verifies "
     "(--verify_split=none)"),
    ({"target": "verify_auc:0.9"}, "has no holdout pairs); drop the target"),
    ({"verify_split": "holdout"}, "--verify_split=holdout but"),
])
def test_verification_the_run_cannot_measure_is_refused_before_anything_is_written(
        small_data, tmp_path, extra, message):
    run_dir = tmp_path / "run"
    assert message in _error(train_args(small_data, str(run_dir), max_iter=10, **extra))
    assert not run_dir.exists() or os.listdir(run_dir) == []


@pytest.mark.slow
def test_a_start_refused_on_its_data_leaves_no_settings_behind(small_data, tmp_path):
    run_dir = tmp_path / "run"
    message = _error(train_args(small_data, str(run_dir), max_iter=10,
                                weights=tmp_path / "no_such_run"))
    assert "no_such_run does not exist" in message
    assert sorted(os.listdir(run_dir)) == [".lock"]
    # The same run dir takes other settings at once: nothing was started there.
    run_train(train_args(small_data, str(run_dir), max_iter=2, test_interval=2, base_lr=0.01))


@pytest.mark.slow
def test_a_flagfiles_verification_target_on_data_without_pairs_is_skipped_with_a_line(
        small_data, tmp_path, capsys):
    flagfile = tmp_path / "mine.flags"
    flagfile.write_text("--target=verify_acc:0.9\n--target=test_top1:0.5\n")
    run_dir = str(tmp_path / "run")
    run_train([f"--flagfile={flagfile}"] + train_args(small_data, run_dir, max_iter=10,
                                                      snapshot=10))
    assert (f"note: --target=verify_acc:0.9 (from a flagfile) is skipped: {small_data} has no "
            "holdout pairs to verify on") in capsys.readouterr().out
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert list(summary["targets"]) == ["0.8", "0.5"]
