"""Galleries: people enrolled from folders of photos, a threshold chosen at a false accept
rate, faces named or "unknown" by predict and, with TensorFlow alone, by an export's
serve_photo; bad galleries and folders in one line, nothing half-written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import framed_faces
from PIL import Image

from kerasbn import enroll, export, predict
from kerasbn.evaluation import verification
from kerasbn.runs.run_dir import RunDir
from kerasbn.serving import gallery


def test_the_threshold_at_a_far_is_the_loosest_that_keeps_to_it():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.85, 0.4, 0.3, 0.2, 0.1], np.float32)
    same = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    # One impostor of five may pass at FAR 0.2: 0.85 is accepted, 0.4 is not.
    value, far, tar = verification.threshold_at_far(scores, same, 0.2)
    assert np.float32(0.4) < value <= np.nextafter(np.float32(0.4), np.float32(1))
    assert (far, tar) == (0.2, 1.0)
    # None may pass at FAR 0.1 (0.5 impostors): the threshold sits just above 0.85.
    value, far, tar = verification.threshold_at_far(scores, same, 0.1)
    assert value > 0.85 and (far, tar) == (0.0, 0.2)


@pytest.fixture
def trained(verified_run):
    """(export, dataset with holdout pairs) of a short run on synthetic faces."""
    with open(os.path.join(verified_run, "config.json")) as f:
        return RunDir(verified_run).export, json.load(f)["data_dir"]


def _people(att_faces, root, people=(1, 2, 3), images=range(1, 6)):
    for person in people:
        (root / f"s{person}").mkdir(parents=True)
        for image in images:
            Image.open(os.path.join(att_faces, f"s{person}", f"{image}.pgm")).save(
                root / f"s{person}" / f"{image}.png")
    return root


@pytest.mark.slow
def test_people_are_enrolled_named_or_unknown(trained, att_faces, tmp_path, capsys,
                                             monkeypatch):
    model, data = trained
    photos, out = _people(att_faces, tmp_path / "photos"), str(tmp_path / "gallery")
    (photos / "nobody").mkdir()
    (photos / "nobody" / "broken.png").write_bytes(b"not a png")
    enroll.main(["enroll", f"--model={model}", f"--photos={photos}", f"--out={out}",
                 "--far=0.1", f"--data_dir={data}"])
    said = capsys.readouterr().out
    assert "enrolled 3 people (15 images)" in said
    assert "not enrolled: nobody (no usable face in its 1 photos)" in said
    meta = json.load(open(os.path.join(out, gallery.META)))
    cut = meta["threshold"]
    assert cut["far"] <= 0.1 and cut["source"].startswith("chosen at FAR 0.1 on the holdout")
    assert f"threshold {cut['value']:.4f}" in said
    # Adding a person embeds only that person's photos.
    pooled, calls = gallery.pooled, []
    monkeypatch.setattr(gallery, "pooled", lambda serve, crops: calls.append(len(crops))
                        or pooled(serve, crops))
    more = _people(att_faces, tmp_path / "more", people=(4,))
    enroll.main(["enroll", f"--model={model}", f"--photos={more}", f"--out={out}"])
    assert calls == [5] and gallery.read(out).names == ("s1", "s2", "s3", "s4")
    # At a threshold no cosine reaches every face is unknown; at -1, its best candidate.
    probe = os.path.join(att_faces, "s2", "9.pgm")
    for threshold, expect in (("1", "unknown (best"), ("-1", "")):
        strict = str(tmp_path / f"g{threshold}")
        enroll.main(["enroll", f"--model={model}", f"--photos={photos}",
                     f"--out={strict}", f"--threshold={threshold}"])
        capsys.readouterr()
        predict.main(["predict", f"--model={model}", f"--gallery={strict}", "--top_k=2",
                      probe, f"--out={tmp_path / threshold}.jsonl"])
        line = capsys.readouterr().out.splitlines()[0]
        record = json.loads(open(f"{tmp_path / threshold}.jsonl").readline())
        assert len(record["candidates"]) == 2
        if expect:
            assert line.startswith(f"{probe}: {expect}") and record["identity"] == "unknown"
        else:
            assert record["identity"] == record["candidates"][0]["name"] != "unknown"


@pytest.mark.slow
def test_a_gallery_refuses_another_model_and_bad_folders(trained, finished_run, att_faces,
                                                         tmp_path):
    model, _ = trained
    photos, out = _people(att_faces, tmp_path / "photos", people=(1,)), str(tmp_path / "g")
    enroll.main(["enroll", f"--model={model}", f"--photos={photos}", f"--out={out}",
                 "--threshold=0.3"])
    before = open(os.path.join(out, gallery.META)).read()
    other = RunDir(finished_run).export
    for argv, said in (
            (["enroll", f"--model={other}", f"--photos={photos}", f"--out={out}"],
             "was enrolled with .*another model"),
            (["predict", f"--model={other}", f"--gallery={out}", str(photos / "s1" / "1.png")],
             "was enrolled with .*another model"),
            (["enroll", f"--model={model}", f"--photos={photos}", f"--out={tmp_path / 'new'}"],
             "a new gallery needs its threshold")):
        command = enroll if argv[0] == "enroll" else predict
        with pytest.raises(SystemExit, match=said) as info:
            command.main(argv)
        assert "\n" not in str(info.value)
    (photos / "empty").mkdir()
    with pytest.raises(SystemExit, match="photos/empty holds no image; add the person's "
                                         "photos or remove the folder"):
        enroll.main(["enroll", f"--model={model}", f"--photos={photos}", f"--out={out}"])
    assert open(os.path.join(out, gallery.META)).read() == before


@pytest.mark.slow
def test_a_gallery_export_names_faces_in_whole_photos_with_tensorflow_alone(
        trained, att_faces, tmp_path, capsys):
    model, _ = trained
    photos = framed_faces(att_faces, tmp_path / "framed", images=6)
    enrolled = tmp_path / "enrolled"
    for person in ("s1", "s2"):  # s3 is not enrolled
        (enrolled / person).mkdir(parents=True)
        for image in range(1, 6):
            os.link(photos / person / f"{image}.png", enrolled / person / f"{image}.png")
    out, served = str(tmp_path / "gallery"), str(tmp_path / "served")
    enroll.main(["enroll", f"--model={model}", f"--photos={enrolled}", f"--out={out}",
                 "--align", "--threshold=0.5"])
    export.main(["export", f"--model={model}", f"--gallery={out}", f"--out={served}"])
    assert f"SavedModel with the gallery {out}: {served}" in capsys.readouterr().out
    probes = [str(photos / person / "6.png") for person in ("s1", "s2", "s3")]
    script = f"""
import sys
sys.modules["kerasbn"] = None
sys.modules["mtcnn"] = None
import tensorflow as tf
m = tf.saved_model.load({served!r})
for path in {probes!r}:
    out = m.signatures["serve_photo"](photo=tf.constant(open(path, "rb").read()))
    print(out["identity"].numpy()[0].decode(), float(out["identity_score"].numpy()[0]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    graph = [line.split() for line in done.stdout.splitlines()]
    # predict --align (the original export, the search in NumPy) says the same of each face.
    predict.main(["predict", f"--model={model}", f"--gallery={out}", "--align", *probes])
    lines = capsys.readouterr().out.splitlines()
    for (name, score), line in zip(graph, lines):
        assert line.split(": ", 1)[1].startswith(name)
        assert f"{float(score):.3f}" in line
    threshold = gallery.read(out).threshold["value"]
    for name, score in graph:
        assert (name == "unknown") == (float(score) < threshold)
        assert name in ("s1", "s2", "unknown")


@pytest.mark.slow
def test_an_export_carries_a_threshold_chosen_at_a_far(verified_run, tmp_path, capsys):
    out = str(tmp_path / "export")
    export.main(["export", f"--run_dir={verified_run}", "--far=0.1", f"--out={out}"])
    marker = json.load(open(os.path.join(out, "kerasbn_export.json")))
    assert marker["threshold_source"].startswith("chosen at FAR 0.1 on the holdout pairs")
    with pytest.raises(SystemExit, match="--far chooses a run's SavedModel threshold"):
        export.main(["export", f"--run_dir={verified_run}", "--far=0.1", "--format=onnx"])
