"""python -m kerasbn.align on a folder of photos: crops, report, montage, resume."""

import csv
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data

from kerasbn import align
from test_faces import PLACEMENTS, composite


@pytest.fixture
def photos(tmp_path, att_faces):
    root = tmp_path / "photos"
    (root / "people").mkdir(parents=True)
    (root / "empty").mkdir()
    Image.fromarray(data.astronaut()).save(root / "people" / "astronaut.jpg", quality=95)
    Image.fromarray(composite(att_faces, PLACEMENTS)[..., 0]).save(root / "people" /
                                                                    "group.png")
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(root / "empty" / "wall.jpg")
    (root / "empty" / "broken.jpg").write_bytes(b"not a photo")
    (root / "notes.txt").write_text("not a photo either")
    return root


def test_every_face_is_written_aligned_with_a_report_and_a_montage(photos, tmp_path, capsys):
    out = tmp_path / "aligned"
    align.main(["align", str(photos), f"--out={out}", "--faces=all", "--size=112",
                "--width=96", "--channels=1"])
    printed = capsys.readouterr().out
    assert "aligned 4 faces from 2 of 4 photos" in printed
    assert "no crop for empty/broken.jpg: not an image Pillow can read" in printed
    assert "no crop for empty/wall.jpg: no face found" in printed
    crops = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out)
                   for f in fs if f.endswith(".png") and f != align.MONTAGE)
    assert crops == ["people/astronaut_0.png", "people/group_0.png", "people/group_1.png",
                     "people/group_2.png"]
    assert np.asarray(Image.open(out / "people" / "group_1.png")).shape == (112, 96)
    with open(out / align.SUMMARY) as f:
        rows = {row["photo"]: row for row in csv.DictReader(f)}
    assert rows["people/group.png"]["faces_found"] == "3"
    assert rows["empty/wall.jpg"]["reason"] == "no face found"
    assert os.path.getsize(out / align.MONTAGE) > 20_000


def test_an_interrupted_run_continues_and_each_photo_is_reported_once(photos, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "aligned"
    real = align.results

    def interrupted(jobs, workers):
        for i, result in enumerate(real(jobs, workers)):
            if i == 2:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(align, "results", interrupted)
    with pytest.raises(SystemExit) as stopped:
        align.main(["align", str(photos), f"--out={out}"])
    assert stopped.value.code == 130
    monkeypatch.setattr(align, "results", real)
    align.main(["align", str(photos), f"--out={out}"])
    assert "continuing: 2 of 4 photos were aligned before" in capsys.readouterr().out
    lines = (out / align.REPORT).read_text().splitlines()
    assert len(lines) == 4 and len({line.split('"photo": ')[1] for line in lines}) == 4
    assert sorted(os.listdir(out / "people")) == ["astronaut.png", "group.png"]


def test_two_workers_write_what_one_does(photos, tmp_path):
    for workers in (1, 2):
        align.main(["align", str(photos), f"--out={tmp_path / str(workers)}",
                    f"--workers={workers}"])
    for name in ("astronaut.png", "group.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "1" / "people" / name)),
                                      np.asarray(Image.open(tmp_path / "2" / "people" / name)))


@pytest.mark.parametrize("argv, message", [
    ([], "give one PHOTOS folder"),
    (["photos"], "--out is required"),
    (["nowhere", "--out=o"], "nowhere does not exist"),
])
def test_commands_that_cannot_work_are_one_line(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        align.main(["align", *argv])
