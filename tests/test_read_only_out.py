"""Every command that writes a file, given an --out it cannot write (a read-only tmpfs, or a
name TensorFlow cannot take), ends in one line naming it before any work: once, seven of
them ended in an `OSError: [Errno 30]` traceback, evaluate after embedding everything. The
read-only cases are skipped where a tmpfs cannot be mounted (mounting needs root)."""

import os
import subprocess

import pytest

from data_tools import build_records
from kerasbn import align, caffe_import, evaluate, export, predict, report, train


@pytest.fixture
def read_only(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        pytest.skip("a read-only tmpfs cannot be mounted here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


COMMANDS = {
    "align": lambda src, out: align.main(["align", src, f"--out={out}"]),
    "build_records": lambda src, out: build_records.main(["build_records", src, f"--out={out}"]),
    "caffe_import": lambda src, out: caffe_import.main([
        "caffe_import", f"--prototxt={src}/n.prototxt", f"--caffemodel={src}/n.caffemodel",
        f"--out={out}"]),
    "export": lambda src, out: export.main(["export", f"--run_dir={src}", f"--out={out}"]),
    "evaluate": lambda src, out: evaluate.main(["evaluate", f"--run_dir={src}",
                                                f"--out={out}"]),
    "report": lambda src, out: report.main(["report", src, f"--out={out}"]),
    "predict --embed": lambda src, out: predict.main([
        "predict", f"--model={src}", f"--embed={src}", f"--out={out}.npy"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_read_only_out_is_one_line_before_any_work(command, read_only, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    out = os.path.join(read_only, "new")
    with pytest.raises(SystemExit) as info:
        COMMANDS[command](str(source), out)
    message = str(info.value)
    assert message.startswith("error: --out=") and "nothing can be written in" in message, \
        message
    assert "Read-only file system" in message and "\n" not in message


UTF8_COMMANDS = {
    "train --run_dir": lambda path, tmp: train.main([
        "train", f"--data_dir={tmp}", f"--run_dir={path}"]),
    "train --data_dir": lambda path, tmp: train.main([
        "train", f"--data_dir={path}", f"--run_dir={tmp}/run"]),
    "caffe_import --out": lambda path, tmp: caffe_import.main([
        "caffe_import", f"--prototxt={tmp}/n.prototxt", f"--caffemodel={tmp}/n.caffemodel",
        f"--out={path}"]),
    "export --out": lambda path, tmp: export.main(["export", f"--run_dir={tmp}",
                                                   f"--out={path}"]),
}


@pytest.mark.parametrize("command", sorted(UTF8_COMMANDS))
def test_a_path_tensorflow_cannot_take_is_one_line_before_anything_is_written(command,
                                                                              tmp_path):
    """A --run_dir that is not UTF-8 once left a run dir holding config.json and a traceback
    from TensorFlow's checkpoint manager."""
    path = os.path.join(tmp_path, os.fsdecode(b"caf\xe9"))
    with pytest.raises(SystemExit) as info:
        UTF8_COMMANDS[command](path, str(tmp_path))
    assert "reads and writes only paths that are UTF-8 text" in str(info.value)
    assert not os.path.exists(path) and not os.path.exists(tmp_path / "run")
