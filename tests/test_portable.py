"""export --format=litert|onnx: the fixed-size core, run by the runtimes users run it with."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import onnxruntime
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import run_train, train_args

from kerasbn.data import pipeline, records
from kerasbn.nn import models
from kerasbn.runs import checkpoints
from kerasbn.runs.run_dir import RunDir, stored_config
from kerasbn.serving import exporter, portable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bfloat16_run(small_data, tmp_path_factory):
    """A run trained in mixed_bfloat16: only a float32 copy can match Keras to 1e-4."""
    run_dir = str(tmp_path_factory.mktemp("bf16"))
    run_train(train_args(small_data, run_dir, max_iter=20, precision="mixed_bfloat16"))
    return run_dir


def float32_reference(run_dir, images):
    """(L2-normalised embedding, probabilities) of the run's checkpoint rebuilt in float32,
    with the normalisation and softmax done in numpy."""
    config = stored_config(run_dir)
    keras.mixed_precision.set_global_policy("float32")
    model = models.build_from(config.network())
    assert checkpoints.restore_latest(RunDir(run_dir), model)
    features = keras.Model(model.inputs, [model.get_layer("embedding").output, model.output])
    embedding, logits = features({"image": images}, training=False)
    embedding, logits = embedding.numpy(), logits.numpy().astype(np.float64)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    return (embedding / np.linalg.norm(embedding, axis=1, keepdims=True),
            probabilities / probabilities.sum(1, keepdims=True))


def split_images(data_dir):
    manifest = records.read_manifest(data_dir)
    return next(iter(pipeline.test_dataset(data_dir, manifest, 16)))[0].numpy()


def run_litert(path, images):
    out = Interpreter(model_path=path).get_signature_runner()(image=images)
    return out["embedding"], out["probabilities"]


def run_onnx(path, images):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": images})))
    return out["embedding"], out["probabilities"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt, suffix, label, runtime", [
    ("litert", ".tflite", "LiteRT", run_litert), ("onnx", ".onnx", "ONNX", run_onnx)])
def test_the_file_gives_the_float32_networks_outputs_in_its_runtime(
        bfloat16_run, small_data, tmp_path, fmt, suffix, label, runtime):
    out = str(tmp_path / f"face{suffix}")
    # The name an earlier kerasbn wrote its temporary file under: now the user's.
    (tmp_path / f"face.partial{suffix}").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "kerasbn.export", f"--run_dir={bfloat16_run}",
                           f"--format={fmt}", f"--out={out}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith(f"{label}: {out} (max |difference| from Keras on 30 test "
                                  "images: embedding ")
    assert sorted(os.listdir(tmp_path)) == sorted([f"face.partial{suffix}", f"face{suffix}",
                                                   f"face{suffix}.json"])
    assert (tmp_path / f"face.partial{suffix}").read_text() == "mine"
    images = split_images(small_data)
    embedding, probabilities = runtime(out, images)
    want_embedding, want_probabilities = float32_reference(bfloat16_run, images)
    np.testing.assert_allclose(embedding, want_embedding, atol=1e-4)
    np.testing.assert_allclose(probabilities, want_probabilities, atol=1e-4)
    # A single image, as a phone sends it.
    one, _ = runtime(out, images[:1])
    np.testing.assert_allclose(one, want_embedding[:1], atol=1e-4)
    with open(out + ".json") as f:
        spec = json.load(f)
    manifest = records.read_manifest(small_data)
    assert spec["input"]["shape"] == [None, 50, 50, 1]
    assert (tuple(spec["mean"]), tuple(spec["std"])) == (manifest.mean, manifest.std)
    assert tuple(spec["class_names"]) == manifest.class_names and spec["format"] == fmt
    assert max(spec["max_abs_difference"].values()) <= 1e-4


@pytest.mark.slow
def test_a_missing_converter_is_named_with_its_package(finished_run, tmp_path, monkeypatch):
    real = portable.importlib.util.find_spec
    monkeypatch.setattr(portable.importlib.util, "find_spec",
                        lambda name: None if name == "tf2onnx" else real(name))
    with pytest.raises(records.DataError, match=r"--format=onnx needs tf2onnx, not installed "
                       r"here: pip install 'kerasbn\[onnx\]' \(or pip install tf2onnx\)"):
        exporter.export_portable(finished_run, "onnx", str(tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_file_outside_the_tolerance_is_not_written(finished_run, tmp_path, monkeypatch):
    monkeypatch.setattr(portable, "TOLERANCE", 0.0)
    with pytest.raises(records.DataError, match="differ from Keras's by up to .* nothing "
                       "written"):
        exporter.export_portable(finished_run, "litert", str(tmp_path / "m.tflite"))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_out_must_be_a_new_or_kerasbn_file_with_the_formats_suffix(finished_run, tmp_path):
    with pytest.raises(records.DataError, match="must end with .onnx"):
        exporter.export_portable(finished_run, "onnx", str(tmp_path / "m.tflite"))
    mine = tmp_path / "mine.tflite"
    mine.write_bytes(b"keep me")
    with pytest.raises(records.DataError, match="exists and is not a kerasbn export"):
        exporter.export_portable(finished_run, "litert", str(mine))
    assert mine.read_bytes() == b"keep me"
