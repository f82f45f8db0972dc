import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import build_folder, read_records
from data_tools import build_records, convert, inspect_records
from kerasbn.data import pipeline, records


def test_folder_tree_every_format_and_bad_files(folder, tmp_path):
    out = tmp_path / "out"
    manifest = build_folder(folder, out, test_fraction=0.2, image_size=32)
    assert manifest.class_names == ("Zoë", "person0", "person1", "person2", "person3")
    skipped = {s["path"]: s["reason"] for s in manifest.values["skipped"]}
    assert set(skipped) == {"person0/empty.png", "person2/truncated.png"}
    assert all(skipped.values())
    left_out = {s["path"]: s["reason"] for s in manifest.values["left_out"]}
    assert left_out == {"person1/notes.txt": "not an image file name (widen --extensions)"}
    counts = {s: e.count for s, e in manifest.splits.items()}
    assert counts["train"] + counts["test"] + len(skipped) + len(left_out) == 4 * 5 + 3 + 3
    images, labels, names = read_records(out, "train")
    assert all(im.shape == (32, 32, 1) for im in images)
    assert "person0/nested/4.tif" in names + read_records(out, "test")[2]
    assert any("zoë" in n for n in names + read_records(out, "test")[2])
    problems, _ = inspect_records.check(str(out))
    assert problems == []
    assert not os.path.exists(out / convert.STATE_DIR)


def test_each_identity_keeps_its_test_share_and_shards_mix_identities(folder, tmp_path):
    manifest = build_folder(folder, tmp_path / "out", test_fraction=0.4, shard_size=4)
    _, test_labels, _ = read_records(tmp_path / "out", "test")
    assert np.bincount(test_labels).tolist() == [1, 2, 2, 2, 2]  # Zoë 3 images, others 5
    first_shard = records.split_files(str(tmp_path / "out"), manifest, "train")[0]
    labels = [inspect_records.decode_record(s)[1]
              for _, s in inspect_records._records(first_shard, "")]
    assert len(set(labels)) > 1


def test_splits_are_deterministic_by_seed(folder, tmp_path):
    a = build_folder(folder, tmp_path / "a", seed=1)
    b = build_folder(folder, tmp_path / "b", seed=1)
    c = build_folder(folder, tmp_path / "c", seed=2)
    assert read_records(tmp_path / "a", "test")[2] == read_records(tmp_path / "b", "test")[2]
    assert read_records(tmp_path / "a", "test")[2] != read_records(tmp_path / "c", "test")[2]
    assert a.mean == b.mean and a.splits == b.splits != c.splits


def test_holdout_identities_and_lfw_pairs(folder, tmp_path):
    manifest = build_folder(folder, tmp_path / "out", holdout_identities=2, pairs=5)
    holdout = manifest.holdout_class_names
    assert len(holdout) == 2 and not set(holdout) & set(manifest.class_names)
    lines = (tmp_path / "out" / "pairs.txt").read_text().splitlines()
    assert lines[0] == "1\t5"
    matched = [l.split("\t") for l in lines[1:6]]
    mismatched = [l.split("\t") for l in lines[6:]]
    assert all(len(m) == 3 and m[0] in holdout and int(m[1]) < int(m[2]) for m in matched)
    assert all(len(m) == 4 and m[0] != m[2] for m in mismatched)
    _, _, names = read_records(tmp_path / "out", "holdout")
    assert {n.split("/")[0] for n in names} == set(holdout)


def test_min_images_per_identity_drops_the_long_tail(folder, tmp_path):
    manifest = build_folder(folder, tmp_path / "out", min_images_per_identity=4)
    assert "Zoë" not in manifest.class_names and manifest.values["dropped_identities"] == 1


def test_list_file_with_root(folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("person3/0.pgm 7\nperson3/1.jpg 7\nperson1/2.png 2\nperson1/3.bmp 2\n")
    manifest = build_folder(listing, tmp_path / "out", root=str(folder), test_fraction=0.5)
    assert manifest.class_names == ("2", "7")
    assert manifest.splits["train"].count == 2
    bad = tmp_path / "bad.txt"
    bad.write_text("person3/0.pgm 7\nno-label-here\n")
    with pytest.raises(records.DataError, match="bad.txt:2"):
        build_folder(bad, tmp_path / "out2", root=str(folder))


def test_resize_modes_and_exif_orientation(tmp_path):
    wide = Image.new("L", (100, 50), 0)
    wide.paste(255, (25, 0, 75, 50))
    from kerasbn.data import images
    crop = images.to_array(wide, 1, 10, "crop")
    pad = images.to_array(wide, 1, 10, "pad")
    stretch = images.to_array(wide, 1, 10, "stretch")
    assert crop.mean() > 240  # the centre crop is the white middle
    assert pad[0].max() == 0 and pad[-1].max() == 0  # black bars top and bottom
    assert stretch[:, 0].max() == 0 and stretch[:, 5].min() == 255
    tall = Image.new("L", (20, 40), 0)
    tall.paste(255, (0, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    tall.save(tmp_path / "r.jpg", exif=exif.tobytes())
    array, _ = images.load(str(tmp_path / "r.jpg"), 1, 20, "stretch")
    assert array[:, -5:].mean() > 200 and array[:, :5].mean() < 50


def test_face_boxes_are_cropped_first(tmp_path):
    root = tmp_path / "faces" / "a"
    root.mkdir(parents=True)
    image = Image.new("L", (40, 40), 0)
    image.paste(255, (10, 10, 20, 20))
    for i in range(2):
        image.save(root / f"{i}.png")
    (tmp_path / "boxes.csv").write_text("file,x,y,w,h\na/0.png,10,10,10,10\n1.png,10,10,10,10\n")
    build_folder(tmp_path / "faces", tmp_path / "out", boxes=str(tmp_path / "boxes.csv"),
           image_size=8, test_fraction=0)
    images, _, _ = read_records(tmp_path / "out")
    assert all(im.min() == 255 for im in images)


def test_refuses_other_dataset_and_reuses_complete_shards(folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []
    real = convert._write_shard

    def die_after_two(path, *args):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, *args)

    monkeypatch.setattr(convert, "_write_shard", die_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_folder(folder, out, shard_size=4)
    assert not os.path.exists(records.manifest_path(out))
    assert not [n for n in os.listdir(out) if n.endswith(".partial")]
    calls.clear()
    monkeypatch.setattr(convert, "_write_shard",
                        lambda path, *args: calls.append(path) or real(path, *args))
    manifest = build_folder(folder, out, shard_size=4)
    assert len(calls) == manifest_shards(manifest) - 2
    assert inspect_records.check(str(out))[0] == []
    with pytest.raises(records.DataError, match="--overwrite"):
        build_folder(folder, out, shard_size=4)
    build_folder(folder, out, shard_size=5, overwrite=True)


def manifest_shards(manifest):
    return sum(len(e.files) for e in manifest.splits.values())


def _write_cifar(directory, per_batch=4):
    directory.mkdir()
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(10)]
    for name in convert.sources.CIFAR_TRAIN + [convert.sources.CIFAR_TEST]:
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        data = rng.integers(0, 256, (per_batch, 3072), np.uint8)
        with open(directory / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names]}, f)
    return data, labels


def test_cifar10_keeps_official_split_and_pixels(tmp_path):
    data, labels = _write_cifar(tmp_path / "cifar-10-batches-py")
    manifest = build_folder(tmp_path / "cifar-10-batches-py", tmp_path / "out")
    assert manifest.image_size == (32, 32) and manifest.channels == 3
    assert manifest.class_names[0] == "class0"
    assert {s: e.count for s, e in manifest.splits.items()} == {"train": 20, "test": 4}
    images, got_labels, _ = read_records(tmp_path / "out", "test")
    expected = {(l, d.reshape(3, 32, 32).transpose(1, 2, 0).tobytes())
                for l, d in zip(labels, data)}
    assert {(l, im.tobytes()) for l, im in zip(got_labels, images)} == expected


def _cli(module, *args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


@pytest.mark.slow
def test_command_line_gzip_rgb_and_inspect(folder, tmp_path):
    out = tmp_path / "out"
    done = _cli("data_tools.build_records", str(folder), f"--out={out}", "--gzip",
                "--channels=3", "--image_size=24", "--workers=2", "--shard_size=5")
    assert done.returncode == 0, done.stderr
    assert "2 skipped, 1 files left out" in done.stdout
    assert "left out person1/notes.txt: not an image file name" in done.stdout
    manifest = records.read_manifest(str(out))
    assert manifest.compression == "GZIP" and manifest.channels == 3
    x, y = next(iter(pipeline.test_dataset(str(out), manifest, 4)))
    assert x.shape == (4, 24, 24, 3)
    checked = _cli("data_tools.inspect_records", str(out), f"--montage={tmp_path / 'm.png'}")
    assert checked.returncode == 0, checked.stderr
    assert "ok: every record parses" in checked.stdout and (tmp_path / "m.png").exists()
    again = _cli("data_tools.build_records", str(folder), f"--out={out}")
    assert again.returncode != 0 and "--overwrite" in again.stderr
    missing = _cli("data_tools.build_records", str(tmp_path / "nowhere"), f"--out={tmp_path / 'x'}")
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_list_file_paths_outside_root_and_twice_listed_images_are_refused(folder, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("0.pgm 7\n../person1/2.png 2\n/etc/hostname 2\n")
    with pytest.raises(records.DataError, match="outside.txt:2: .* lies outside --root"):
        build_folder(outside, tmp_path / "o1", root=str(folder / "person3"))
    listed = build_folder(outside, tmp_path / "o2", root=str(folder / "person3"),
                          allow_outside_root=True, test_fraction=0.0)
    assert listed.splits["train"].count == 2  # /etc/hostname is no image: skipped
    twice = tmp_path / "twice.txt"
    twice.write_text("person3/0.pgm 7\nperson1/2.png 2\nperson3/./0.pgm 2\n")
    with pytest.raises(records.DataError, match="twice.txt:3: .* listed again .*line 1"):
        build_folder(twice, tmp_path / "o3", root=str(folder))


def test_the_output_inside_the_source_is_never_read_as_an_identity(folder):
    first = build_folder(folder, folder / "out")
    again = build_folder(folder, folder / "out", overwrite=True)
    assert first.class_names == again.class_names == (
        "Zoë", "person0", "person1", "person2", "person3")
    assert again.splits == first.splits


def test_an_image_over_the_decompression_bomb_limit_is_skipped_by_name(folder, tmp_path,
                                                                       monkeypatch):
    Image.new("L", (120, 120)).save(folder / "person0" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 120 x 120 > 2 x 5000
    manifest = build_folder(folder, tmp_path / "out")
    reasons = {s["path"]: s["reason"] for s in manifest.values["skipped"]}
    assert "decompression-bomb limit" in reasons[os.path.join("person0", "huge.png")]


def test_image_size_zero_is_refused(folder, tmp_path):
    with pytest.raises(records.DataError, match="--image_size must be at least 1, got 0"):
        build_folder(folder, tmp_path / "out", image_size=0)


def _interrupt_at_the_second_shard(monkeypatch):
    """Makes the build's second shard write raise Ctrl-C; returns the real writer."""
    real, calls = convert._write_shard, []

    def interrupted_second_shard(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(convert, "_write_shard", interrupted_second_shard)
    return real


def test_an_interrupted_build_keeps_its_finished_shards_and_a_rerun_completes(folder, tmp_path,
                                                                            monkeypatch, capsys):
    out = tmp_path / "out"
    real = _interrupt_at_the_second_shard(monkeypatch)
    argv = ["build_records", str(folder), f"--out={out}", "--shard_size=6", "--workers=1"]
    with pytest.raises(SystemExit) as info:
        build_records.main(argv)
    assert info.value.code == 130
    assert "the finished shards" in capsys.readouterr().err
    kept = sorted(p.name for p in out.glob("*.tfrecord"))
    assert len(kept) == 1 and not list(out.glob("*.partial"))
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(convert, "_write_shard", real)
    build_records.main(argv)
    assert records.read_manifest(str(out)).splits["train"].count > 0


def test_only_image_files_are_taken_and_the_rest_is_listed(folder, tmp_path):
    # Extended Yale B marks its rejects *.pgm.bad; a FIFO would block a reader forever; a
    # name that is not UTF-8 is kept byte for byte.
    (folder / "person3" / "yaleB01_P00A+000E+00.pgm.bad").write_bytes(
        (folder / "person3" / "0.pgm").read_bytes())
    os.mkfifo(folder / "person3" / "pipe.png")
    odd = os.path.join(os.fsencode(folder / "person3"), b"caf\xe9.png")
    with open(odd, "wb") as f:
        f.write((folder / "person3" / "2.png").read_bytes())
    manifest = build_folder(folder, tmp_path / "out", test_fraction=0.2, image_size=32)
    left_out = {s["path"]: s["reason"] for s in manifest.values["left_out"]}
    assert left_out == {
        "person1/notes.txt": "not an image file name (widen --extensions)",
        "person3/yaleB01_P00A+000E+00.pgm.bad": "not an image file name (widen --extensions)",
        "person3/pipe.png": "not a regular file"}
    names = read_records(tmp_path / "out", "train")[2] + read_records(tmp_path / "out",
                                                                      "test")[2]
    assert os.fsdecode(b"person3/caf\xe9.png") in names
    widened = build_folder(folder, tmp_path / "wide", test_fraction=0.2, image_size=32,
                           extensions=(".png", ".pgm", ".jpg", ".tif", "bmp", ".bad"))
    assert "person3/yaleB01_P00A+000E+00.pgm.bad" not in {
        s["path"] for s in widened.values["left_out"]}
    assert sum(e.count for e in widened.splits.values()) == sum(
        e.count for e in manifest.splits.values()) + 1


def test_out_keeps_the_users_own_files_and_refuses_a_file(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("notes.partial", "mine.tfrecord", "train-00000-of-00001.tfrecord.bak"):
        (out / name).write_text("mine")
    (out / "train-00000-of-00009.tfrecord.partial").write_text("a killed run's shard")
    build_folder(folder, out, image_size=24)
    # Other arguments: the earlier shards go, the user's files stay.
    build_folder(folder, out, image_size=20, overwrite=True)
    for name in ("notes.partial", "mine.tfrecord", "train-00000-of-00001.tfrecord.bak"):
        assert (out / name).read_text() == "mine"
    assert not (out / "train-00000-of-00009.tfrecord.partial").exists()
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(records.DataError, match="afile is a file; give a directory"):
        build_folder(folder, tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_build_resumed_after_its_source_changed_starts_over(folder, tmp_path, monkeypatch,
                                                              capsys):
    """Stale output once reused: a person removed between an interrupted build and its rerun
    left the old shards in place, so records outnumbered the files and labels shifted."""
    out = tmp_path / "out"
    real = _interrupt_at_the_second_shard(monkeypatch)
    argv = ["build_records", str(folder), f"--out={out}", "--shard_size=6", "--workers=1",
            "--test_fraction=0"]
    with pytest.raises(SystemExit):
        build_records.main(argv)
    monkeypatch.setattr(convert, "_write_shard", real)
    shutil.rmtree(folder / "person0")
    build_records.main(argv)
    assert "another source or settings: starting over" in capsys.readouterr().out
    manifest = records.read_manifest(str(out))
    _, labels, names = read_records(out)
    assert "person0" not in manifest.class_names
    assert set(labels) == set(range(len(manifest.class_names)))
    assert not any(name.startswith("person0/") for name in names)
    assert len(names) == manifest.splits["train"].count == len(set(names))


def test_a_landmarks_row_that_cannot_place_its_face_is_refused(tmp_path):
    """One identity's crop once came from another's row (two photos shared a file name, the
    file keyed its rows by that name alone, and the last row won); five points at one place
    once ended in a MatrixInverse traceback."""
    points = "30 40 60 40 45 55 35 70 55 70"
    for person in ("a", "b"):
        (tmp_path / "faces" / person).mkdir(parents=True)
        Image.fromarray(np.full((100, 100, 3), 128, np.uint8)).save(
            tmp_path / "faces" / person / "1.png")
    (tmp_path / "twice.txt").write_text(f"a/1.png {points}\na/1.png {points}\n")
    with pytest.raises(records.DataError, match="twice.txt:2: a/1.png has a row already"):
        build_folder(tmp_path / "faces", tmp_path / "d1", landmarks=str(tmp_path / "twice.txt"))
    (tmp_path / "bare.txt").write_text(f"1.png {points}\n")
    with pytest.raises(records.DataError, match="names 1.png alone, a file name 2 photos"):
        build_folder(tmp_path / "faces", tmp_path / "d2", landmarks=str(tmp_path / "bare.txt"))
    for name, row in (("zero", "0 " * 10), ("one", "5 5 " * 5)):
        (tmp_path / f"{name}.txt").write_text(f"a/1.png {row}\nb/1.png {points}\n")
        with pytest.raises(records.DataError, match="landmarks of a/1.png are all at one place"):
            build_folder(tmp_path / "faces", tmp_path / f"d{name}",
                         landmarks=str(tmp_path / f"{name}.txt"))
    (tmp_path / "paths.txt").write_text(f"a/1.png {points}\nb/1.png {points}\n")
    build_folder(tmp_path / "faces", tmp_path / "d3", landmarks=str(tmp_path / "paths.txt"),
                 image_size=50, test_fraction=0)
    assert records.read_manifest(str(tmp_path / "d3")).splits["train"].count == 2


def test_a_second_build_on_one_out_is_refused_while_the_first_runs(folder, tmp_path):
    """Two `build_records --align` on one --out: the second once died on the first's
    .partial; it now takes the lock training takes on a run dir."""
    from kerasbn.utils import dir_lock

    out = tmp_path / "out"
    with dir_lock.held(str(out), lambda pid: AssertionError("the test holds no lock yet")):
        (out / "mine.txt").write_text("kept")
        with pytest.raises(records.DataError, match=r"being written by another build \(pid "):
            build_folder(folder, out)
    build_folder(folder, out)
    assert (out / "mine.txt").read_text() == "kept"
    assert records.read_manifest(str(out)).splits["train"].count > 0


def test_an_image_size_of_height_and_width_makes_non_square_records(folder, tmp_path):
    """112x96 (SphereFace's and CosFace's crop) once had no tool that made it: --image_size
    took one side. Each photo is resized as Pillow's ImageOps.fit makes it that size."""
    out = tmp_path / "data"
    build_records.main(["build_records", str(folder), f"--out={out}", "--image_size=40,30",
                        "--test_fraction=0"])
    assert list(records.read_manifest(str(out)).image_size) == [40, 30]
    images, _, names = read_records(out)
    index = names.index("person1/2.png")
    with Image.open(folder / "person1" / "2.png") as photo:
        want = np.asarray(ImageOps.fit(photo.convert("L"), (30, 40), Image.BILINEAR))
    np.testing.assert_array_equal(np.asarray(images[index]).reshape(40, 30), want)
