"""python -m kerasbn.align on a folder of photos: crops, report, montage, resume."""

import csv
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data
from test_faces import PLACEMENTS, composite

from kerasbn import align


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


@pytest.mark.slow
def test_every_face_is_written_aligned_with_a_report_and_a_montage(photos, tmp_path, capsys):
    out = tmp_path / "aligned"
    align.main(["align", str(photos), f"--out={out}", "--faces=all",
                "--image_size=112,96", "--channels=1"])
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


@pytest.mark.slow
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


def test_build_records_aligns_inline_and_counts_photos_without_a_face(photos, tmp_path):
    from conftest import build_folder, read_records

    from kerasbn.faces import aligner, detector

    manifest = build_folder(photos, tmp_path / "data", align=True, image_size=112,
                            channels=3, test_fraction=0)
    assert manifest.values["aligned"]["faces_missing"] == 1
    skipped = {s["path"]: s["reason"] for s in manifest.values["skipped"]}
    assert skipped == {"empty/wall.jpg": "no face found",
                       "empty/broken.jpg": "not an image Pillow can read"}
    crops, _, names = read_records(tmp_path / "data")
    photo = np.asarray(Image.open(photos / "people" / "astronaut.jpg"))
    [face] = detector.detect(photo)
    want = aligner.crops(photo, face.landmarks[None], 112, 112, 3)[0]
    np.testing.assert_array_equal(crops[names.index("people/astronaut.jpg")], want)


def test_build_records_aligns_by_a_landmarks_file_and_refuses_a_bad_one(photos, tmp_path):
    from conftest import build_folder, read_records

    from data_tools import convert
    from kerasbn.data import records
    from kerasbn.faces import aligner

    source = tmp_path / "faces"
    (source / "a").mkdir(parents=True)
    (source / "b").mkdir()
    Image.fromarray(data.astronaut()).save(source / "a" / "1.png")
    Image.fromarray(data.astronaut()[::-1].copy()).save(source / "b" / "2.png")
    points = np.array([[203.5, 100.1], [245.4, 102.2], [224.2, 126.4], [201.8, 138.6],
                       [244.4, 140.4]])
    flipped = points * [1, -1] + [0, 511]
    # One photo as `path x1 y1 ...`, the other as an insightface .lst line (five x, five y).
    (tmp_path / "points.txt").write_text(
        "a/1.png " + " ".join(f"{v}" for v in points.ravel()) + "\n"
        + "0\tb/2.png\t1\t0\t0\t10\t10\t" + "\t".join(
            f"{v}" for v in np.concatenate([flipped[:, 0], flipped[:, 1]])) + "\n")
    build_folder(source, tmp_path / "data", landmarks=str(tmp_path / "points.txt"),
                 image_size=50, channels=1, test_fraction=0)
    crops, _, names = read_records(tmp_path / "data")
    want = aligner.crops(data.astronaut(), points[None], 50, 50, 1)[0]
    np.testing.assert_array_equal(crops[names.index("a/1.png")], want)
    (tmp_path / "short.txt").write_text("a/1.png " + " ".join(map(str, points.ravel())) + "\n")
    with pytest.raises(records.DataError, match="short.txt has no row for b/2.png"):
        build_folder(source, tmp_path / "short", landmarks=str(tmp_path / "short.txt"))
    outside = points.copy()
    outside[0, 0] = 900
    (tmp_path / "far.txt").write_text("".join(
        f"{n} " + " ".join(map(str, outside.ravel())) + "\n" for n in ("a/1.png", "b/2.png")))
    with pytest.raises(records.DataError, match="far.txt: the landmarks of a/1.png lie outside "
                                                "its 512x512 photo"):
        build_folder(source, tmp_path / "far", landmarks=str(tmp_path / "far.txt"))
    assert not os.path.exists(tmp_path / "far" / "manifest.json")
    assert convert.read_landmarks(str(tmp_path / "points.txt"))["b/2.png"].shape == (5, 2)


@pytest.mark.slow
def test_predict_align_names_every_face_and_compares_the_largest(finished_run, photos,
                                                                 capsys):
    from kerasbn import predict
    group = str(photos / "people" / "group.png")
    astronaut = str(photos / "people" / "astronaut.jpg")
    predict.main(["predict", f"--model={finished_run}", "--align", "--top_k=2", group,
                  str(photos / "empty" / "wall.jpg")])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{group} face ") for line in lines)
    assert [line.split(" face ")[1].split(" ")[0] for line in lines] == ["0", "1", "2"]
    assert all(len(line.split(": ")[1].split("  ")) == 2 for line in lines)
    assert "wall.jpg: no face found" in err
    predict.main(["predict", f"--model={finished_run}", "--align", "--compare", astronaut,
                  astronaut])
    assert capsys.readouterr().out.strip().endswith(
        "cosine 1.0000 (the export holds no threshold: its dataset had no holdout pairs) "
        "(the largest face of each)")


@pytest.mark.slow
def test_evaluate_verifies_pairs_of_whole_photos_by_their_aligned_faces(finished_run,
                                                                        att_faces, tmp_path):
    import json

    from kerasbn import evaluate
    root = tmp_path / "lfw"
    rng = np.random.default_rng(0)
    for person in (1, 2, 3):
        (root / f"p{person}").mkdir(parents=True)
        for image in (1, 2):
            canvas = Image.new("L", (240, 200), 100)
            face = Image.open(os.path.join(att_faces, f"s{person}", f"{image}.pgm"))
            canvas.paste(face.resize((138, 168)), tuple(rng.integers(0, 30, 2).tolist()))
            canvas.save(root / f"p{person}" / f"p{person}_{image:04d}.png")
    (tmp_path / "pairs.txt").write_text("1\t3\np1\t1\t2\np2\t1\t2\np3\t1\t2\n"
                                        "p1\t1\tp2\t1\np2\t2\tp3\t1\np3\t2\tp1\t2\n")
    out = tmp_path / "out"
    evaluate.main(["evaluate", f"--model={finished_run}/export",
                   f"--pairs={tmp_path / 'pairs.txt'}", f"--image_root={root}", "--align",
                   f"--out={out}"])
    [result] = json.load(open(out / "evaluate.json"))
    assert result["aligned"] is True
    assert result["verify_pairs"] == {"matched": 3, "mismatched": 3}
    Image.new("L", (240, 200), 100).save(root / "p3" / "p3_0002.png")
    with pytest.raises(SystemExit, match=r"p3_0002.png: no face found; a pair needs a face"):
        evaluate.main(["evaluate", f"--model={finished_run}/export",
                       f"--pairs={tmp_path / 'pairs.txt'}", f"--image_root={root}", "--align",
                       f"--out={out}"])


@pytest.mark.slow
def test_a_network_trained_on_aligned_faces_names_each_face_of_a_whole_photo(att_faces,
                                                                            tmp_path):
    # Three people's AT&T photos, each set in a larger canvas, aligned by build_records
    # --align; the exported network then takes a whole group photo of them, and nothing but
    # TensorFlow: serve_photo finds, aligns and names every face inside the graph.
    import subprocess
    import sys

    from conftest import build_folder, framed_faces, run_train, train_args
    from test_faces import composite

    from kerasbn.runs.run_dir import RunDir
    source = framed_faces(att_faces, tmp_path / "people")
    build_folder(source, tmp_path / "data", align=True, image_size=50, channels=1,
                 test_fraction=0.2)
    run_dir = str(tmp_path / "run")
    run_train(train_args(str(tmp_path / "data"), run_dir, max_iter=120, test_interval=120,
                         snapshot=120, batch_size=16))
    group = tmp_path / "group.png"
    Image.fromarray(composite(att_faces, PLACEMENTS)[..., 0]).save(group)
    script = f"""
import sys
sys.modules["kerasbn"] = None
sys.modules["mtcnn"] = None
import tensorflow as tf
out = tf.saved_model.load({RunDir(run_dir).export!r}).signatures["serve_photo"](
    photo=tf.constant(open({str(group)!r}, "rb").read()))
for box, names in zip(out["boxes"].numpy(), out["names"].numpy()):
    print(int(box[0]), names[0].decode())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    faces = sorted((int(x), name) for x, name in (line.split() for line in
                                                  done.stdout.splitlines()))
    assert [name for _, name in faces] == ["s1", "s2", "s3"]


@pytest.mark.slow
def test_the_five_paths_from_a_photo_make_the_same_crop(finished_run, tmp_path):
    """align, build_records --align, evaluate --align, predict --align and an export's
    serve_photo all run `aligner.align` on the detector graph's faces: one crop, to the bit."""
    import tensorflow as tf
    from conftest import build_folder, read_records

    from kerasbn import predict
    from kerasbn.evaluation import evaluator
    from kerasbn.runs.run_dir import RunDir
    from kerasbn.serving import signatures

    source = tmp_path / "photos"
    for person in ("a", "b"):
        (source / person).mkdir(parents=True)
        # A JPEG: serve_photo decodes it in the graph, the rest with Pillow (they once
        # differed by up to 18 levels, enough to move the face's box).
        Image.fromarray(data.astronaut()).save(source / person / "astronaut.jpg", quality=90)
    photo = str(source / "a" / "astronaut.jpg")
    served = signatures.from_run(finished_run)
    (height, width), channels = served.image_size, served.channels
    align.main(["align", str(source), f"--out={tmp_path / 'aligned'}",
                f"--image_size={height},{width}", f"--channels={channels}"])
    by_align = np.asarray(Image.open(tmp_path / "aligned" / "a" / "astronaut.png"))
    build_folder(source, tmp_path / "data", align=True, image_size=height, channels=channels,
                 test_fraction=0)
    crops, _, names = read_records(tmp_path / "data")
    by_records = crops[names.index("a/astronaut.jpg")]
    by_evaluate = evaluator.load_photos([photo], served, align=True)[0]
    loaded, _, _ = predict.load_model(RunDir(finished_run).export)
    [(_, by_predict)], _ = predict.aligned_faces(loaded, [photo], every=False)
    with open(photo, "rb") as f:
        by_serving = loaded.signatures["serve_photo"](photo=tf.constant(f.read()))["crops"][0]
    want = by_align.reshape(height, width, channels)
    assert want.std() > 10
    for crop in (by_records, by_evaluate, by_predict["crops"], by_serving.numpy()):
        np.testing.assert_array_equal(crop.reshape(height, width, channels), want)


def _astronaut(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(path)
    return path.read_bytes()


def test_a_list_files_outside_photos_are_aligned_inside_out_and_left_untouched(tmp_path):
    """Data loss guarded: a list file naming photos by absolute path or through `..` once
    wrote each crop beside (and over) its photo, outside --out."""
    far = tmp_path / "far" / "x.png"
    before = _astronaut(far)
    _astronaut(tmp_path / "lists" / "up.png")
    (tmp_path / "lists" / "sub").mkdir()
    listing = tmp_path / "lists" / "sub" / "photos.txt"
    listing.write_text(f"{far}\n../up.png\n")
    out = tmp_path / "aligned"
    align.main(["align", str(listing), f"--out={out}", "--image_size=50", "--channels=1"])
    assert far.read_bytes() == before
    written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out)
                     for f in fs if f.endswith(".png") and f != align.MONTAGE)
    assert written == [os.path.join("_abs", *str(far).strip("/").split("/"))[:-4] + ".png",
                       os.path.join("_up", "up.png")]


def test_out_may_not_be_the_photo_folder_and_no_crop_lands_on_a_photo(tmp_path, capsys):
    """Data loss guarded: `align PHOTOS --out PHOTOS` once overwrote the PNGs with their
    crops; a list file in --out itself names photos that a crop would replace."""
    photo = tmp_path / "photos" / "a.png"
    before = _astronaut(photo)
    with pytest.raises(SystemExit, match="is the photo folder itself"):
        align.main(["align", str(photo.parent), f"--out={photo.parent}"])
    (photo.parent / "list.txt").write_text("a.png\n")
    with pytest.raises(SystemExit, match="would be written over the photo"):
        align.main(["align", str(photo.parent / "list.txt"), f"--out={photo.parent}",
                    "--image_size=50"])
    assert photo.read_bytes() == before
    assert sorted(os.listdir(photo.parent)) == ["a.png", "list.txt"]


def test_photos_that_would_share_a_crop_name_get_their_own(tmp_path):
    """Names once collided: a.gif and a.webp (and the montage's own name) gave one crop."""
    root = tmp_path / "photos"
    for name in ("anim.gif", "anim.webp", "align_montage.jpg", "solo.jpg"):
        _astronaut(root / name)
    out = tmp_path / "aligned"
    align.main(["align", str(root), f"--out={out}", "--image_size=50", "--channels=1"])
    with open(out / align.SUMMARY) as f:
        crops = {row["photo"]: row["crops"] for row in csv.DictReader(f)}
    assert crops == {"align_montage.jpg": "align_montage.jpg.png", "anim.gif": "anim.gif.png",
                     "anim.webp": "anim.webp.png", "solo.jpg": "solo.png"}
    assert all((out / crop).is_file() for crop in crops.values())
    assert align.crop_stems(["a.gif", "a.webp", "a.gif.png"]) == {
        "a.gif": "a.gif", "a.gif.png": "a.gif.png", "a.webp": "a.webp"}


def test_a_rerun_with_other_settings_is_refused_instead_of_keeping_old_crops(tmp_path):
    """Stale output once reused: a rerun at another size said "continuing: 1 of 1" and kept
    the old crops."""
    root = tmp_path / "photos"
    _astronaut(root / "a.png")
    out = tmp_path / "aligned"
    align.main(["align", str(root), f"--out={out}", "--image_size=50", "--channels=1"])
    for flag in ("--image_size=64", "--channels=3", "--faces=all"):
        args = {"--image_size": "--image_size=50", "--channels": "--channels=1"}
        args[flag.split("=")[0]] = flag
        with pytest.raises(SystemExit, match="aligned with other settings"):
            align.main(["align", str(root), f"--out={out}", *args.values(),
                        *([flag] if flag.startswith("--faces") else [])])
    align.main(["align", str(root), f"--out={out}", "--image_size=50", "--channels=1"])
    assert np.asarray(Image.open(out / "a.png")).shape == (50, 50)


def test_a_photo_whose_name_is_not_utf8_is_aligned_summed_up_and_drawn(tmp_path, capsys):
    """Its name once failed align's summary (and so every rerun, the montage never made)."""
    root = tmp_path / "photos"
    root.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    Image.fromarray(data.astronaut()).save(os.path.join(root, name))
    out = tmp_path / "aligned"
    align.main(["align", str(root), f"--out={out}", "--image_size=50", "--channels=1"])
    assert "aligned 1 faces from 1 of 1 photos" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, name))
    with open(out / align.SUMMARY, "rb") as f:
        assert b"caf\xe9.png" in f.read()
    assert (out / align.MONTAGE).stat().st_size > 10_000


def test_a_photo_too_large_to_detect_in_is_named_not_run_out_of_memory(tmp_path, monkeypatch,
                                                                       capsys):
    """A 10000x10000 JPEG once cost align 12.7 GB (and Pillow's DecompressionBombWarning
    leaked into the output)."""
    from kerasbn.faces import detector_defaults

    monkeypatch.setattr(detector_defaults, "MAX_PIXELS", 200 * 200)
    root = tmp_path / "photos"
    _astronaut(root / "big.png")
    align.main(["align", str(root), f"--out={tmp_path / 'out'}", "--image_size=50"])
    out = capsys.readouterr().out
    assert "no crop for big.png: larger than 0.04 megapixels (512x512)" in out


def test_serve_photo_and_predict_refuse_a_photo_too_large_to_detect_in(tmp_path, monkeypatch):
    """serve_photo once spent 7.4 GB on a 10000x10000 JPEG: its detector graph refuses a photo
    over the limit by name before building the pyramid, and predict --align names it as align
    does without running the export."""
    import tensorflow as tf

    from kerasbn import predict
    from kerasbn.faces import detector, detector_defaults, graph_detector

    monkeypatch.setattr(detector_defaults, "MAX_PIXELS", 200 * 200)
    detect = tf.function(graph_detector.GraphDetector(detector.graph()[0].networks).detect)
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than 0.04 megapixels"):
        detect(tf.zeros([300, 200, 3], tf.uint8))
    assert detect(tf.zeros([200, 200, 3], tf.uint8))[0].shape == (0, 4)

    class Export:
        signatures = {"serve_photo": None}
    big = tmp_path / "big.png"
    _astronaut(big)
    faces, bad = predict.aligned_faces(Export(), [str(big)], every=False)
    assert faces == [] and bad == [(str(big), "larger than 0.04 megapixels (512x512), which "
                                    "detection would need many GB for; downscale it")]
