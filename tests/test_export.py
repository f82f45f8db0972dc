import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasbn.data import pipeline, records
from kerasbn.serving import exporter
from kerasbn.training import checkpoints, network
from kerasbn.training.run_dir import RunDir, stored_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_a_directory_that_is_no_run_is_one_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kerasbn.export", f"--run_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'config.json'} not found: --run_dir must be a run directory made "
        "by `python -m kerasbn.train`"]


def test_export_run_reads_a_run_from_before_config_json(finished_run, tmp_path):
    run = RunDir(finished_run)
    saved = open(run.config_json).read()
    os.remove(run.config_json)
    try:
        out = exporter.export_run(finished_run, str(tmp_path / "legacy"))
    finally:
        with open(run.config_json, "w") as f:
            f.write(saved)
    images = tf.zeros([2, 50, 50, 1], tf.uint8)
    np.testing.assert_allclose(_serve(out, images)["probabilities"],
                               _serve(run.export, images)["probabilities"], atol=1e-6)


def test_out_over_anything_but_a_previous_export_is_refused(finished_run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    (tmp_path / "file.txt").write_text("keep me")
    for out in (tmp_path / "mine", tmp_path / "file.txt"):
        with pytest.raises(records.DataError, match="is not a kerasbn export"):
            exporter.export_run(finished_run, str(out))
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
    assert (tmp_path / "file.txt").read_text() == "keep me"
    first = exporter.export_run(finished_run, str(tmp_path / "exp"))
    assert exporter.is_export(first)
    assert exporter.export_run(finished_run, first) == first  # a previous export is replaced


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


def test_the_savedmodel_loads_and_serves_photos_without_kerasbn(finished_run, tmp_path):
    # Any size, gray or RGB, as arrays or as encoded files; names and threshold inside.
    from PIL import Image
    face = np.asarray(Image.fromarray(np.uint8(np.random.default_rng(0).integers(
        0, 255, (112, 92)))).convert("RGB"))
    Image.fromarray(face).save(tmp_path / "face.png")
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
    for signature in ("serving_default", "embed", "serve_bytes", "metadata"):
        assert f"signature_def['{signature}']" in shown.stdout


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
