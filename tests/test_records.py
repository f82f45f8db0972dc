import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kerasbn.data import records
from kerasbn.data.manifest import Manifest


def _images(n, height=50, width=40, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, channels), np.uint8)


@pytest.mark.parametrize("encoding,channels", [("raw", 1), ("raw", 3), ("png", 1), ("png", 3)])
def test_lossless_round_trip(encoding, channels):
    images = _images(5, channels=channels)
    serialized = [records.encode_example(im, label, encoding, f"f{label}.png")
                  for label, im in enumerate(images)]
    parsed, labels = records.parse_batch(tf.constant(serialized), (50, 40), channels, encoding)
    np.testing.assert_array_equal(parsed.numpy(), images)
    np.testing.assert_array_equal(labels.numpy(), np.arange(5))
    assert parsed.dtype == tf.uint8 and labels.dtype == tf.int32


def test_jpeg_round_trip_is_close():
    smooth = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (50, 1))[:, :, None]
    serialized = records.encode_example(smooth, 7, "jpeg")
    parsed, labels = records.parse_batch(tf.constant([serialized]), (50, 40), 1, "jpeg")
    assert np.abs(parsed.numpy()[0].astype(int) - smooth).mean() < 2.0
    assert labels.numpy().tolist() == [7]


def test_example_uses_tensorflow_image_keys():
    example = tf.train.Example.FromString(records.encode_example(_images(1)[0], 3, "png", "a.png"))
    feature = example.features.feature
    assert feature["image/format"].bytes_list.value[0] == b"png"
    assert feature["image/height"].int64_list.value[0] == 50
    assert feature["image/width"].int64_list.value[0] == 40
    assert feature["image/channels"].int64_list.value[0] == 1
    assert feature["image/class/label"].int64_list.value[0] == 3
    assert feature["image/filename"].bytes_list.value[0] == b"a.png"


def test_wrong_image_size_names_the_record():
    serialized = records.encode_example(_images(1, 32, 32)[0], 0, "raw", "small.png")
    with pytest.raises(tf.errors.InvalidArgumentError, match="small.png"):
        records.parse_batch(tf.constant([serialized]), (50, 50), 1, "raw")


def test_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        records.encode_example(np.zeros((4, 4), np.float32), 0)


def _manifest():
    return {"image_size": [50, 50], "channels": 1, "encoding": "raw", "compression": "",
            "class_names": ["ann", "bob"], "mean": [120.5], "std": [40.25],
            "splits": {"train": {"files": ["train-00000-of-00001.tfrecord"], "count": 3},
                       "test": {"files": ["test-00000-of-00001.tfrecord"], "count": 1}},
            "skipped": [], "command": "test"}


def _touch_shards(directory, manifest):
    for info in manifest["splits"].values():
        for name in info["files"]:
            open(os.path.join(directory, name), "wb").close()


def test_manifest_round_trip(tmp_path):
    manifest = _manifest()
    _touch_shards(tmp_path, manifest)
    records.write_manifest(tmp_path, manifest)
    loaded = records.read_manifest(tmp_path)
    assert loaded.to_dict() == dict(manifest, schema_version=records.SCHEMA_VERSION)
    assert (loaded.image_size, loaded.class_names, loaded.splits["train"].count) == (
        (50, 50), ("ann", "bob"), 3)
    assert not os.path.exists(records.manifest_path(tmp_path) + ".tmp")


def test_manifest_version_mismatch_is_refused(tmp_path):
    manifest = _manifest()
    _touch_shards(tmp_path, manifest)
    records.write_manifest(tmp_path, manifest)
    path = records.manifest_path(tmp_path)
    data = json.load(open(path))
    data["schema_version"] = records.SCHEMA_VERSION + 1
    json.dump(data, open(path, "w"))
    with pytest.raises(records.DataError, match="schema_version"):
        records.read_manifest(tmp_path)


def test_missing_manifest_names_the_path(tmp_path):
    with pytest.raises(records.DataError, match="manifest.json not found"):
        records.read_manifest(tmp_path)


def test_missing_shard_names_the_file(tmp_path):
    records.write_manifest(tmp_path, _manifest())
    with pytest.raises(records.DataError, match="train-00000-of-00001.tfrecord"):
        records.read_manifest(tmp_path)


def test_empty_split_is_refused(tmp_path):
    manifest = _manifest()
    manifest["splits"]["test"] = {"files": [], "count": 0}
    with pytest.raises(records.DataError, match="no 'test' records"):
        records.split_files(str(tmp_path), Manifest.from_dict(manifest), "test")


def test_a_zero_std_is_refused(tmp_path):
    manifest = dict(_manifest(), std=[0.0])
    _touch_shards(tmp_path, manifest)
    records.write_manifest(tmp_path, manifest)
    with pytest.raises(records.DataError, match="constant"):
        records.read_manifest(tmp_path)


@pytest.mark.slow
def test_the_same_record_is_the_same_bytes_in_every_process():
    import subprocess
    import sys
    code = ("import hashlib, numpy as np; from kerasbn import records; print(hashlib.md5("
            "records.encode_example(np.full((4, 4), 7, np.uint8), 3, 'raw', 'a.png'))"
            ".hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout
               for seed in (1, 2)}
    assert len(digests) == 1 and len(digests.pop()) == 33


@pytest.mark.parametrize("change,message", [
    (dict(image_size=50), "image_size must be \\[height, width\\]"),
    (dict(class_names=[]), "lists no classes"), (dict(channels=2), "channels must be 1 or 3"),
    (dict(mean=[0.5, 0.5]), "mean has 2 values for 1 channel"),
])
def test_a_malformed_manifest_is_one_clear_error(tmp_path, change, message):
    manifest = dict(_manifest(), **change)
    _touch_shards(tmp_path, manifest)
    records.write_manifest(tmp_path, manifest)
    with pytest.raises(records.DataError, match=message):
        records.read_manifest(tmp_path)
