import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kerasbn import checkpoints, export, optimizers, pipeline, records, train_flags
from kerasbn.run_dir import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_saved_model_serves_uint8_and_matches_keras(finished_run, small_data):
    manifest = records.read_manifest(small_data)
    files = records.split_files(small_data, manifest, "test")
    batch = next(iter(tf.data.TFRecordDataset(files).batch(8)))
    images, _ = records.parse_batch(batch, (50, 50), 1, "raw")
    served = tf.saved_model.load(os.path.join(finished_run, "export"))
    out = served.signatures["serving_default"](images=images)
    model = optimizers.build_and_compile(train_flags.stored_config(finished_run))
    assert checkpoints.restore_latest(RunDir(finished_run), model)
    logits = model(pipeline.normalize(images, manifest), training=False)
    np.testing.assert_allclose(out["probabilities"].numpy(), tf.nn.softmax(logits).numpy(),
                               atol=1e-5)
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
        out = export.export_run(finished_run, str(tmp_path / "legacy"))
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
            export.export_run(finished_run, str(out))
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
    assert (tmp_path / "file.txt").read_text() == "keep me"
    first = export.export_run(finished_run, str(tmp_path / "exp"))
    assert export.is_export(first)
    assert export.export_run(finished_run, first) == first  # a previous export is replaced


@pytest.mark.parametrize("shape", [(50, 50, 1), (2, 50, 50, 2), (2, 50, 50, 4), (1, 40, 50, 1)])
def test_a_batch_of_the_wrong_shape_is_one_clear_error_not_an_abort(finished_run, shape):
    serve = tf.saved_model.load(RunDir(finished_run).export).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"images must be a uint8 batch \[N, 50, 50, 1\]; got shape"):
        serve(images=tf.zeros(shape, tf.uint8))
