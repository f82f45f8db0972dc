import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kerasbn.data import pipeline, records
from kerasbn.runs import checkpoints, network
from kerasbn.runs.run_dir import RunDir, stored_config
from kerasbn.serving import exporter, signatures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_saved_model_serves_uint8_and_matches_keras(finished_run, small_data):
    manifest = records.read_manifest(small_data)
    files = records.split_files(small_data, manifest, "test")
    batch = next(iter(tf.data.TFRecordDataset(files).batch(8)))
    images, _ = records.parse_batch(batch, (50, 50), 1, "raw")
    served = tf.saved_model.load(os.path.join(finished_run, "export"))
    out = served.signatures["serving_default"](images=images)
    model = network.build_and_compile(stored_config(finished_run))
    assert checkpoints.restore_latest(RunDir(finished_run), model)
    logits = model(pipeline.normalize(images, manifest), training=False)
    np.testing.assert_allclose(out["probabilities"].numpy(), tf.nn.softmax(logits).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(out["logits"].numpy(), logits.numpy(), atol=1e-5)
    norms = np.linalg.norm(out["embedding"].numpy(), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert out["embedding"].shape == (8, 64)


def _serve(path, images):
    return tf.saved_model.load(path).signatures["serving_default"](images=images)


@pytest.mark.slow
def test_export_command_rebuilds_the_run_from_its_config(finished_run, tmp_path):
    out = str(tmp_path / "again")
    done = subprocess.run([sys.executable, "-m", "kerasbn.export", f"--run_dir={finished_run}",
                           f"--out={out}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"SavedModel: {out}\n" and done.stderr == ""
    images = tf.zeros([3, 50, 50, 1], tf.uint8) + 128
    np.testing.assert_allclose(_serve(out, images)["probabilities"],
                               _serve(RunDir(finished_run).export, images)["probabilities"],
                               atol=1e-6)
    assert not os.path.exists(out + ".partial")


@pytest.mark.slow
def test_a_directory_that_is_no_run_is_one_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kerasbn.export", f"--run_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'config.json'} not found: --run_dir must be a run directory made "
        "by `python -m kerasbn.train`"]


@pytest.mark.slow
def test_export_run_reads_a_run_from_before_config_json(finished_run, tmp_path):
    run = RunDir(finished_run)
    saved = open(run.config_json).read()
    os.remove(run.config_json)
    try:
        out, _ = exporter.export_run(finished_run, str(tmp_path / "legacy"))
    finally:
        with open(run.config_json, "w") as f:
            f.write(saved)
    images = tf.zeros([2, 50, 50, 1], tf.uint8)
    np.testing.assert_allclose(_serve(out, images)["probabilities"],
                               _serve(run.export, images)["probabilities"], atol=1e-6)


@pytest.mark.slow
def test_out_over_anything_but_a_previous_export_is_refused(finished_run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    (tmp_path / "file.txt").write_text("keep me")
    for out in (tmp_path / "mine", tmp_path / "file.txt"):
        with pytest.raises(records.DataError, match="is not a kerasbn export"):
            exporter.export_run(finished_run, str(out))
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
    assert (tmp_path / "file.txt").read_text() == "keep me"
    first, kept = exporter.export_run(finished_run, str(tmp_path / "exp"))
    assert exporter.is_export(first) and kept == []
    assert exporter.export_run(finished_run, first) == (first, [])  # an export is replaced


@pytest.mark.slow
def test_reexport_replaces_only_the_exports_files_and_no_user_file_is_a_temporary(
        finished_run, tmp_path):
    out = tmp_path / "exp"
    exporter.export_run(finished_run, str(out))
    (out / "client.py").write_text("mine")
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("mine")
    # The names an earlier kerasbn wrote its temporaries under: now the user's.
    (tmp_path / "exp.partial").mkdir()
    (tmp_path / "exp.partial" / "thesis.tex").write_text("mine")
    (out / "variables" / "variables.index").write_bytes(b"stale")
    path, kept = exporter.export_run(finished_run, str(out))
    assert path == str(out) and kept == ["client.py", "notes"]
    assert (out / "client.py").read_text() == "mine"
    assert (out / "notes" / "a.txt").read_text() == "mine"
    assert (tmp_path / "exp.partial" / "thesis.tex").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["exp", "exp.partial"]
    assert (out / "variables" / "variables.index").read_bytes() != b"stale"
    images = tf.zeros([2, 50, 50, 1], tf.uint8)
    np.testing.assert_allclose(_serve(str(out), images)["probabilities"],
                               _serve(RunDir(finished_run).export, images)["probabilities"],
                               atol=1e-6)


@pytest.mark.slow
def test_export_into_a_training_runs_own_export_is_refused(finished_run, tmp_path):
    with RunDir(finished_run).lock():
        with pytest.raises(records.DataError, match="is training now.*give --out elsewhere"):
            exporter.export_run(finished_run)
        path, _ = exporter.export_run(finished_run, str(tmp_path / "now"))
    assert exporter.is_export(path)


@pytest.mark.slow
def test_out_in_a_missing_directory_and_a_malformed_marker_are_one_line(finished_run,
                                                                         tmp_path):
    with pytest.raises(records.DataError, match="does not exist; create it first"):
        exporter.export_run(finished_run, str(tmp_path / "no" / "such" / "exp"))
    assert os.listdir(tmp_path) == []
    path, _ = exporter.export_run(finished_run, str(tmp_path / "exp"))
    marker = os.path.join(path, "kerasbn_export.json")
    for text in ("{not json", '{"classes": 6}', "[]"):
        with open(marker, "w") as f:
            f.write(text)
        with pytest.raises(records.DataError, match="kerasbn_export.json is malformed"):
            signatures.load_saved_model(path)


@pytest.mark.slow
@pytest.mark.parametrize("shape, dtype, message", [
    ((2, 50, 50, 2), tf.uint8, r"images must be a uint8 batch \[N, H, W, 1 or 3\]; got shape"),
    ((2, 60, 40, 4), tf.uint8, r"images must be a uint8 batch \[N, H, W, 1 or 3\]; got shape"),
    ((50, 50, 1), tf.uint8, "4-dimensional"),
    ((1, 50, 50, 1), tf.float32, "expected to be a uint8 tensor but is a float tensor"),
])
def test_wrong_input_is_one_clear_error_not_an_abort(finished_run, shape, dtype, message):
    serve = tf.saved_model.load(RunDir(finished_run).export).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(images=tf.zeros(shape, dtype))


@pytest.mark.slow
def test_the_savedmodel_loads_and_serves_photos_without_kerasbn(finished_run, tmp_path):
    # Any size, gray or RGB, as arrays or as encoded files; names and threshold inside.
    from PIL import Image
    face = np.asarray(Image.fromarray(np.uint8(np.random.default_rng(0).integers(
        0, 255, (112, 92)))).convert("RGB"))
    Image.fromarray(face).save(tmp_path / "face.png")
    Image.fromarray(face).save(tmp_path / "face.ppm")
    script = f"""
import sys
sys.modules["kerasbn"] = None
import numpy as np, tensorflow as tf
from PIL import Image
m = tf.saved_model.load({RunDir(finished_run).export!r})
face = np.asarray(Image.open({str(tmp_path / 'face.png')!r}))
a = m.signatures["serving_default"](images=tf.constant(face[None]))
b = m.signatures["serve_bytes"](encoded=tf.constant([open({str(tmp_path / 'face.png')!r},
                                                          "rb").read()]))
e = m.signatures["embed"](images=tf.constant(face[None]))
meta = m.signatures["metadata"]()
assert np.abs(a["embedding"].numpy() - b["embedding"].numpy()).max() < 1e-6
p = m.signatures["serve_bytes"](encoded=tf.constant([open({str(tmp_path / 'face.ppm')!r},
                                                          "rb").read()]))
assert np.abs(a["embedding"].numpy() - p["embedding"].numpy()).max() < 1e-6
assert np.abs(a["embedding"].numpy() - e["embedding"].numpy()).max() < 1e-6
print(a["names"].numpy()[0][0].decode(), len(meta["class_names"].numpy()),
      float(meta["threshold"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    name, classes, threshold = done.stdout.split()
    assert name.startswith("id") and classes == "6" and threshold == "nan"
    shown = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
                            "show", "--dir", RunDir(finished_run).export, "--all"],
                           capture_output=True, text=True)
    for signature in ("serving_default", "embed", "serve_bytes", "serve_photo", "metadata"):
        assert f"signature_def['{signature}']" in shown.stdout


@pytest.mark.slow
def test_an_any_size_rgb_photo_embeds_as_the_pipeline_does_its_converted_image(
        finished_run, small_data, tmp_path):
    from PIL import Image

    from kerasbn.data import images as image_files
    manifest = records.read_manifest(small_data)
    files = records.split_files(small_data, manifest, "test")
    batch = next(iter(tf.data.TFRecordDataset(files).batch(4)))
    faces, _ = records.parse_batch(batch, (50, 50), 1, "raw")
    serve = tf.saved_model.load(RunDir(finished_run).export).signatures["serving_default"]
    model = network.build_and_compile(stored_config(finished_run))
    checkpoints.restore_latest(RunDir(finished_run), model)
    embed = keras.Model(model.inputs, model.get_layer("embedding").output)
    for face in faces.numpy():
        photo = Image.fromarray(face[..., 0]).convert("RGB").resize((92, 112),
                                                                    Image.BICUBIC)
        converted = image_files.to_array(photo, 1, 50, "crop")
        served = serve(images=tf.constant(np.asarray(photo)[None]))["embedding"].numpy()[0]
        features = embed(pipeline.normalize(tf.constant(converted[None]), manifest)).numpy()[0]
        features /= np.linalg.norm(features)
        assert served @ features > 0.999


@pytest.mark.slow
def test_the_export_sees_a_large_jpeg_as_the_converter_recorded_it(finished_run, tmp_path):
    # Photos at least twice the record size: the converter once decoded them at a reduced
    # DCT scale (Pillow's draft mode) while the export decodes them whole.
    from conftest import build_folder, read_records

    from kerasbn import predict
    from kerasbn.data import preprocess

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:250, 0:250] / 250
    for person in range(2):
        (root / f"p{person}").mkdir(parents=True)
        for i in range(3):
            face = np.sin(9 * y + i + person) * np.cos(7 * x - i) * 80 + 128 + rng.normal(
                0, 12, (250, 250))
            Image.fromarray(np.clip(face, 0, 255).astype(np.uint8)).save(
                root / f"p{person}" / f"{i}.jpg", quality=90)
    build_folder(root, tmp_path / "data", test_fraction=0, image_size=50)
    recorded, _, names = read_records(tmp_path / "data")
    files = [str(root / name) for name in names]
    # predict's path: the file decoded whole, then the export's resize.
    loaded = np.stack([predict.read_photos([f], 1)[0][0][1] for f in files])
    served = preprocess.resize(preprocess.to_channels(tf.constant(loaded), 1), 50, "crop")
    # serve_bytes's path: the encoded file decoded and resized inside the graph.
    decoded = tf.concat([preprocess.resize(preprocess.to_channels(preprocess.decode(
        tf.constant(open(f, "rb").read()), 1), 1), 50, "crop") for f in files], 0)
    for graph in (served.numpy(), decoded.numpy()):
        difference = np.abs(graph - np.stack(recorded).astype(np.float32))
        assert difference.mean() <= 0.6 and difference.max() <= 1, (difference.mean(),
                                                                    difference.max())
    export = tf.saved_model.load(RunDir(finished_run).export)
    from_records = export.signatures["serving_default"](images=tf.constant(np.stack(recorded)))
    from_files = export.signatures["serve_bytes"](
        encoded=tf.constant([open(f, "rb").read() for f in files]))
    np.testing.assert_allclose(from_files["probabilities"], from_records["probabilities"],
                               atol=0.02)


def test_an_export_is_readable_as_the_umask_says(finished_run, tmp_path):
    """Exports were once 0700 whatever the umask (tempfile's private directory): a serving
    process of another user could not read them."""
    old = os.umask(0o022)
    try:
        out, _ = exporter.export_run(finished_run, str(tmp_path / "shared"))
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o755
    assert os.stat(os.path.join(out, "saved_model.pb")).st_mode & 0o777 == 0o644


def test_an_empty_batch_gives_empty_outputs_of_the_right_shapes(finished_run):
    """An empty batch to serving_default or serve_bytes once failed with unrelated shape
    errors from inside the network."""
    loaded, _ = signatures.load_saved_model(RunDir(finished_run).export)
    classes = len(records.read_manifest(stored_config(finished_run).data_dir).class_names)
    for out in (loaded.signatures["serving_default"](images=tf.zeros([0, 9, 7, 3], tf.uint8)),
                loaded.signatures["serve_bytes"](encoded=tf.constant([], tf.string))):
        assert out["probabilities"].shape == (0, classes)
        assert out["embedding"].shape[0] == 0 and out["names"].shape == (0, 5)
    assert loaded.signatures["embed"](images=tf.zeros([0, 50, 50, 1], tf.uint8))[
        "embedding"].shape[0] == 0


def test_an_export_with_a_truncated_variables_file_is_one_line(finished_run, tmp_path):
    """predict once ended in an IndexError from TensorFlow's checkpoint reader."""
    import glob
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(RunDir(finished_run).export, copy)
    [data] = glob.glob(str(copy / "variables" / "variables.data-*"))
    os.truncate(data, 1000)
    with pytest.raises(records.DataError, match="cannot load the SavedModel"):
        signatures.load_saved_model(str(copy))
