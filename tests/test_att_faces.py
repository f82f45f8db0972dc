"""The real AT&T faces end to end: convert, inspect, train briefly (skipped where absent)."""

import os

import pytest

from conftest import run_train

from data_tools import convert, inspect_records
from kerasbn.data import records
from kerasbn.runs.run_dir import RunDir

# 40 classes: chance is 2.5%; 150 iterations (about 30 s on 2 cores) reach about 90%.
MIN_TOP1 = 0.5


@pytest.mark.slow
def test_att_faces_convert_inspect_and_train(att_faces, tmp_path):
    out = str(tmp_path / "att")
    manifest = convert.build(att_faces, out, log=lambda _: None)
    assert len(manifest.class_names) == 40
    counts = {s: e.count for s, e in manifest.splits.items()}
    assert counts == {"train": 320, "test": 80}
    assert manifest.values["skipped"] == []
    files = sum(len(fs) for _, _, fs in os.walk(att_faces)) - 1  # less the top README.md
    assert sum(counts.values()) + len(manifest.values["skipped"]) == files == 400
    problems, per_class = inspect_records.check(out)
    assert problems == []
    assert set(per_class["test"].values()) == {2} and set(per_class["train"].values()) == {8}
    records.read_manifest(out)

    run_dir = str(tmp_path / "run")
    run_train([f"--data_dir={out}", f"--run_dir={run_dir}", "--model=bn", "--max_iter=150",
               "--test_interval=50", "--display=50", "--batch_size=32", "--base_lr=0.05",
               "--bn_momentum=0.9", "--stepvalue=120", "--mirror", "--snapshot=0"])
    final = RunDir(run_dir).read_metrics()[-1]
    assert final["iteration"] == 150
    assert final["test_top1"] >= MIN_TOP1, final
