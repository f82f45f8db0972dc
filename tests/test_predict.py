"""python -m kerasbn.predict on the files users have: several formats and sizes, bad files."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kerasbn import predict
from kerasbn.data import records
from kerasbn.runs.run_dir import RunDir


@pytest.fixture(scope="module")
def photos(small_data, tmp_path_factory):
    """Test-split faces saved as PGM, PNG, JPEG, RGBA PNG and 16-bit PNG at several sizes,
    plus a file that is no image and a truncated one."""
    root = tmp_path_factory.mktemp("photos")
    manifest = records.read_manifest(small_data)
    batch = next(iter(tf.data.TFRecordDataset(
        records.split_files(small_data, manifest, "test")).batch(5)))
    faces, labels = records.parse_batch(batch, (50, 50), 1, "raw")
    gray = [Image.fromarray(face[..., 0]) for face in faces.numpy()]
    gray[0].save(root / "a.pgm")
    gray[1].resize((100, 100)).save(root / "b.png")
    gray[2].convert("RGB").resize((92, 112)).save(root / "c.jpg", quality=95)
    gray[3].convert("RGBA").resize((64, 64)).save(root / "d.png")
    Image.fromarray(np.asarray(gray[4], np.uint16) * 257).save(root / "e.png")
    (root / "junk.jpg").write_bytes(b"not an image")
    (root / "cut.png").write_bytes((root / "b.png").read_bytes()[:200])
    names = [manifest.class_names[label] for label in labels.numpy()]
    return root, names


@pytest.mark.slow
def test_each_photo_is_named_and_bad_files_are_skipped(finished_run, photos, capsys):
    root, names = photos
    files = [str(root / n) for n in ("a.pgm", "b.png", "c.jpg", "d.png", "e.png", "junk.jpg",
                                     "cut.png")]
    predict.main(["predict", f"--model={RunDir(finished_run).export}", "--top_k=2", *files])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == files[:5]
    for line in lines:
        top = line.split(": ")[1].split("  ")
        assert len(top) == 2 and all(t.split()[0].startswith("id") for t in top)
        probabilities = [float(t.split()[1]) for t in top]
        assert probabilities == sorted(probabilities, reverse=True)
    assert f"skipped {files[5]}: not an image Pillow can read" in err
    assert f"skipped {files[6]}: unreadable image" in err


@pytest.mark.slow
def test_a_run_dir_serves_through_its_export(finished_run, photos, capsys):
    root, _ = photos
    predict.main(["predict", f"--model={finished_run}", str(root / "a.pgm")])
    assert capsys.readouterr().out.startswith(f"{root / 'a.pgm'}: id")


@pytest.mark.slow
def test_compare_prints_the_cosine_and_says_the_export_has_no_threshold(finished_run, photos,
                                                                       capsys):
    root, _ = photos
    predict.main(["predict", f"--model={RunDir(finished_run).export}", "--compare",
                  str(root / "a.pgm"), str(root / "a.pgm")])
    out = capsys.readouterr().out
    assert "cosine 1.0000" in out and "holds no threshold" in out


@pytest.mark.slow
def test_embed_writes_every_readable_image_and_the_file_list(finished_run, photos, tmp_path):
    root, _ = photos
    out = tmp_path / "emb.npy"
    predict.main(["predict", f"--model={RunDir(finished_run).export}", f"--embed={root}",
                  f"--out={out}"])
    embeddings = np.load(out)
    files = (tmp_path / "emb.txt").read_text().split()
    assert files == ["a.pgm", "b.png", "c.jpg", "d.png", "e.png"]
    assert embeddings.shape == (5, 64) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["a.jpg"], "--model is required"),
    (["--model=m"], "give one or more photos"),
    (["--model=m", "--compare", "a.jpg"], "--compare takes exactly two photos, got 1"),
    (["--model=m", "--embed=."], "--embed needs --out"),
    (["--model=m", "--embed=.", "--out=emb.txt"], r"--embed needs --out=FILE.npy"),
    (["--model=m", "--embed=.", "--out=no/such/emb.npy"], "does not exist; create it first"),
    (["--model=m", "a.jpg"], "m is not a SavedModel written by kerasbn.export"),
])
def test_commands_that_cannot_work_are_one_line(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        predict.main(["predict", *argv])


@pytest.mark.slow
def test_embed_lists_odd_file_names_as_they_are_and_skips_what_is_no_file(finished_run, photos,
                                                                          tmp_path, capsys):
    root, _ = photos
    folder = tmp_path / "faces"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    with open(odd, "wb") as f:
        f.write((root / "b.png").read_bytes())
    (folder / "a.pgm").write_bytes((root / "a.pgm").read_bytes())
    os.mkfifo(folder / "pipe.jpg")
    out = tmp_path / "emb.npy"
    predict.main(["predict", f"--model={finished_run}", f"--embed={folder}", f"--out={out}"])
    assert (tmp_path / "emb.txt").read_bytes() == b"a.pgm\ncaf\xe9.png\n"
    assert np.load(out).shape == (2, 64)


@pytest.mark.slow
def test_output_cut_short_by_its_reader_ends_quietly(finished_run, photos):
    root, _ = photos
    # Relative names from the photos' folder keep the command line short.
    done = subprocess.run(
        f"{sys.executable} -m kerasbn.predict --model={finished_run} {' a.pgm' * 3000} | head -1",
        shell=True, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0 and done.stdout.startswith("a.pgm: ")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
