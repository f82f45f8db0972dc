import contextlib
import json
import multiprocessing
import os
import signal

import pytest

from kerasbn.config import RunConfig
from kerasbn.runs.run_dir import RunDir, RunDirError

CONFIG = RunConfig(data_dir="d", run_dir="r", num_classes=6, image_size=(50, 50), channels=1)


def _hold_lock(path, ready):
    with RunDir(path).lock():
        ready.set()
        signal.pause()


@contextlib.contextmanager
def lock_held_elsewhere(path):
    """Another process holds the run dir's lock while the block runs (yields its pid); it is
    then killed with SIGKILL, as a crashed trainer would be."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_hold_lock, args=(str(path), ready))
    holder.start()
    try:
        assert ready.wait(60)
        yield holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_killed_holder_frees_the_lock(tmp_path):
    with lock_held_elsewhere(tmp_path) as pid:
        with pytest.raises(RunDirError, match=f"pid {pid}"):
            with RunDir(str(tmp_path)).lock():
                pass
    with RunDir(str(tmp_path)).lock():
        pass


def test_metrics_append_whole_lines_and_a_torn_last_line_is_dropped(tmp_path):
    run = RunDir(str(tmp_path))
    for i in range(3):
        run.append_metrics({"iteration": i * 10, "test_top1": 0.1 * i})
    with open(run.metrics_jsonl, "a") as f:
        f.write('{"iteration": 30, "test_to')
    assert [e["iteration"] for e in run.read_metrics()] == [0, 10, 20] and run.metrics_torn()
    assert [e["iteration"] for e in run.keep_metrics_until(10)] == [0, 10]
    assert open(run.metrics_jsonl).read().count("\n") == 2 and not run.metrics_torn()
    with open(run.metrics_jsonl, "a") as f:
        f.write("1")  # torn to something that parses, but no record
    assert [e["iteration"] for e in run.read_metrics()] == [0, 10]
    with open(run.metrics_jsonl, "w") as f:
        f.write('{"iteration": 0}\nbroken\n{"iteration": 20}\n')
    with pytest.raises(RunDirError, match="metrics.jsonl:2"):
        run.read_metrics()
    with open(run.metrics_jsonl, "wb") as f:
        f.write(b'{"iteration": 0}\n{"iteration": 1\xff}\n{"iteration": 20}\n')
    with pytest.raises(RunDirError, match="metrics.jsonl:2 is not a JSON line"):
        run.read_metrics()
    with open(run.metrics_jsonl, "wb") as f:
        f.write(b'{"iteration": 0}\n{"iteration": 1\xff')
    assert [e["iteration"] for e in run.read_metrics()] == [0]


def test_settings_are_written_and_read_back(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    assert not run.holds_run() and run.read_config() is None
    run.write_settings(CONFIG, "--max_iter=5\n")
    assert run.holds_run() and run.read_config() == CONFIG
    assert json.load(open(run.config_json))["num_classes"] == 6
    assert open(run.flags_txt).read() == "--max_iter=5\n"


def test_a_different_run_is_refused_and_clear_removes_only_the_runs_files(tmp_path):
    run = RunDir(str(tmp_path))
    run.write_settings(CONFIG, "")
    os.makedirs(run.checkpoints)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="--seed: 0 there, 1 now.*--overwrite"):
        run.check_same_run(RunConfig(**{**CONFIG.to_dict(), "seed": 1}), CONFIG)
    run.clear()
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_clear_keeps_the_users_files_inside_the_runs_own_folders(tmp_path):
    run = RunDir(str(tmp_path))
    run.write_settings(CONFIG, "")
    written = ["metrics.jsonl", "summary.json", "summary.json.tmp4242",
               "checkpoints/checkpoint", "checkpoints/ckpt-10.index",
               "checkpoints/ckpt-10.data-00000-of-00001", "checkpoints/ckpt-20_temp/part",
               "checkpoints/best/checkpoint", "checkpoints/best/ckpt-5.index",
               "tensorboard/train/events.out.tfevents.1.host.2.v2",
               "tensorboard/test/events.out.tfevents.1.host.2.v2",
               "export/saved_model.pb", "export/fingerprint.pb", "export/kerasbn_export.json",
               "export/variables/variables.index", "export/assets/x",
               "export.onnx", "export.onnx.json", "export.tflite", "export.tflite.json"]
    mine = ["notes.txt", "checkpoints/README.md", "checkpoints/best/why.txt",
            "tensorboard/train/plot.png", "tensorboard/mine/events.out.tfevents.9",
            "export/client.py", "export.onnx.bak"]
    for path in written + mine:
        os.makedirs(os.path.dirname(tmp_path / path), exist_ok=True)
        (tmp_path / path).write_text("x")
    assert run.clear() == sorted(mine)
    left = sorted(os.path.relpath(os.path.join(folder, name), tmp_path)
                  for folder, _, names in os.walk(tmp_path) for name in names)
    assert left == sorted(mine)
    assert not (tmp_path / "tensorboard" / "test").exists()
    assert not (tmp_path / "export" / "variables").exists()
