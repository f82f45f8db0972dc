"""Every command that writes a file, tried against the three hazards of where it writes: an
--out it cannot write (a read-only tmpfs), a name that is not UTF-8, and Ctrl-C during its
work. Each ends in one line before it has written anything, or (a name that is not UTF-8
where only Python writes) does its work there: once, seven of them ended a read-only --out in
an `OSError: [Errno 30]` traceback (evaluate after embedding everything), train left a run dir
holding only config.json for a name TensorFlow could not take, and export, predict, report,
compare_norms and launch ended Ctrl-C in a KeyboardInterrupt traceback. The read-only cases
are skipped where a tmpfs cannot be mounted (mounting needs root)."""

import dataclasses
import glob
import os
import subprocess
import types

import numpy as np
import pytest
from PIL import Image

from data_tools import build_records, convert, synth
from kerasbn import (align, caffe_import, compare_norms, enroll, evaluate, export, launch,
                     predict, report, show_schedule, torch_import, train, tune)
from kerasbn.analysis import comparison
from kerasbn.serving import exporter
from kerasbn.training import loop
from kerasbn.tuning import search


@dataclasses.dataclass(frozen=True)
class Writer:
    """A command's `argv(sources, out)`, the function of its work that Ctrl-C interrupts
    (`work`: owner, name), and whether TensorFlow writes its output (`by_tensorflow`)."""
    command: object
    argv: object
    work: tuple
    by_tensorflow: bool


WRITERS = {
    "align": Writer(align, lambda s, out: ["align", s.photos, f"--out={out}"],
                    (align, "align_all"), False),
    "build_records": Writer(build_records, lambda s, out: ["build_records", s.empty,
                                                           f"--out={out}"],
                            (convert, "build"), True),
    "synth": Writer(synth, lambda s, out: ["synth", f"--out={out}"], (synth, "build"), True),
    "caffe_import": Writer(caffe_import, lambda s, out: [
        "caffe_import", f"--prototxt={s.empty}/n.prototxt",
        f"--caffemodel={s.empty}/n.caffemodel", f"--out={out}"], (caffe_import, "convert"),
        True),
    "compare_norms": Writer(compare_norms, lambda s, out: [
        "compare_norms", f"--data_dir={s.data}", f"--out={out}", "--seeds=1"],
        (compare_norms, "run_one"), True),
    "enroll": Writer(enroll, lambda s, out: [
        "enroll", f"--model={s.run}/export", f"--photos={s.people}", f"--out={out}",
        "--threshold=0.3"], (enroll, "enroll"), False),
    "evaluate": Writer(evaluate, lambda s, out: ["evaluate", f"--run_dir={s.run}",
                                                 f"--out={out}"],
                       (evaluate, "evaluate_all"), False),
    "export": Writer(export, lambda s, out: ["export", f"--run_dir={s.run}", f"--out={out}"],
                     (exporter, "export_run"), True),
    "export --format=onnx": Writer(export, lambda s, out: [
        "export", f"--run_dir={s.run}", "--format=onnx", f"--out={out}"],
        (exporter, "export_portable"), True),
    "export --format=litert": Writer(export, lambda s, out: [
        "export", f"--run_dir={s.run}", "--format=litert", f"--out={out}"],
        (exporter, "export_portable"), True),
    "launch": Writer(launch, lambda s, out: ["launch", "quickstart", f"--data_dir={s.data}",
                                             f"--run_root={out}"],
                     (launch, "train_all"), True),
    "predict --embed": Writer(predict, lambda s, out: [
        "predict", f"--model={s.run}/export", f"--embed={s.photos}", f"--out={out}.npy"],
        (predict, "load_model"), False),
    "report": Writer(report, lambda s, out: ["report", s.run, f"--out={out}"],
                     (comparison, "load_run"), False),
    "show_schedule --plot": Writer(show_schedule, lambda s, out: [
        "show_schedule", f"--plot={out}.png", "--max_iter=100"], (show_schedule, "plot"),
        False),
    "torch_import": Writer(torch_import, lambda s, out: [
        "torch_import", f"--pth={s.empty}/model.pt", "--network=r18", f"--out={out}"],
        (torch_import, "convert"), True),
    "tune": Writer(tune, lambda s, out: [
        "tune", f"--space={os.path.dirname(__file__)}/../launch/tune/study_quick.yaml",
        f"--data_dir={s.data}", f"--study_dir={out}", "--trials=1"], (search, "work"), True),
    "train": Writer(train, lambda s, out: ["train", f"--data_dir={s.data}", f"--run_dir={out}"],
                    (loop, "start"), True),
}
HAZARDS = ("read-only", "not UTF-8", "Ctrl-C")


def _cases():
    # Where Python writes, a name that is not UTF-8 is written: the whole command runs.
    return [pytest.param(name, hazard, id=f"{name}, {hazard}",
                         marks=[pytest.mark.slow] if hazard == "not UTF-8"
                         and not WRITERS[name].by_tensorflow else [])
            for name in sorted(WRITERS) for hazard in HAZARDS]


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


def _sources(tmp_path, small_data, request, whole):
    """What the commands read: empty folders where their checks come before reading, a real
    run and photos where the command runs whole."""
    empty = tmp_path / "source"
    empty.mkdir()
    photos = people = empty
    if whole:
        from skimage import data
        photos = tmp_path / "photos"
        photos.mkdir()
        Image.fromarray(data.astronaut()).save(photos / "astronaut.jpg", quality=90)
        people = tmp_path / "people"
        (people / "astronaut").mkdir(parents=True)
        os.link(photos / "astronaut.jpg", people / "astronaut" / "astronaut.jpg")
    run = request.getfixturevalue("finished_run") if whole else str(empty)
    return types.SimpleNamespace(empty=str(empty), photos=str(photos), data=small_data,
                                 run=run, people=str(people))


@pytest.mark.parametrize("name, hazard", _cases())
def test_every_writing_command_meets_each_hazard_in_one_line_or_writes(
        name, hazard, tmp_path, small_data, request, monkeypatch, capsys):
    writer = WRITERS[name]
    whole = hazard == "not UTF-8" and not writer.by_tensorflow
    sources = _sources(tmp_path, small_data, request, whole)
    out = {"read-only": lambda: os.path.join(request.getfixturevalue("read_only"), "new"),
           "not UTF-8": lambda: os.path.join(tmp_path, os.fsdecode(b"caf\xe9")),
           "Ctrl-C": lambda: os.path.join(tmp_path, "new")}[hazard]()
    if hazard == "Ctrl-C":
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(*writer.work, interrupted)
    argv = writer.argv(sources, out)
    if whole:
        writer.command.main(argv)
        written = glob.glob(glob.escape(out) + "*")
        assert written and all(os.path.getsize(p) for p in written if os.path.isfile(p))
        if name == "predict --embed":
            assert np.load(out + ".npy").shape[0] == 1
        return
    with pytest.raises(SystemExit) as info:
        writer.command.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if hazard == "Ctrl-C":
        assert info.value.code == 130
        assert err.strip().splitlines()[-1].startswith("interrupted: ")
        # What a command wrote before its work (compare_norms' flags.txt) was written whole.
        assert not [p for p in glob.glob(glob.escape(out) + "*/**", recursive=True)
                    if ".tmp" in p or ".partial" in p]
        return
    message = str(info.value.code)
    assert "\n" not in message and message.startswith("error: --"), message
    assert ("Read-only file system" in message if hazard == "read-only"
            else "reads and writes only paths that are UTF-8 text" in message), message
    assert not glob.glob(glob.escape(out) + "*")
