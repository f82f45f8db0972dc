import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import build_folder
from data_tools import inspect_records
from kerasbn.data import pipeline, records


def test_write_manifest_describes_foreign_records(tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("validation", 4)):
        with tf.io.TFRecordWriter(str(d / f"{split}-00000-of-00001")) as w:
            for i in range(n):
                image = rng.integers(0, 256, (20, 20, 3), np.uint8)
                example = tf.train.Example.FromString(
                    records.encode_example(image, 1 + i % 3, "jpeg"))
                example.features.feature["image/class/text"].bytes_list.value.append(
                    f"name{1 + i % 3}".encode())
                w.write(example.SerializeToString())
    manifest = inspect_records.write_manifest(str(d), label_offset=1)
    assert manifest.class_names == ("name1", "name2", "name3")
    assert manifest.encoding == "jpeg" and manifest.image_size == (20, 20)
    assert {s: e.count for s, e in manifest.splits.items()} == {"train": 12, "test": 4}
    loaded = records.read_manifest(str(d))
    _, labels = next(iter(pipeline.test_dataset(str(d), loaded, 16)))
    assert sorted(set(labels.numpy().tolist())) == [0, 1, 2]
    assert inspect_records.check(str(d))[0] == []


def test_inspect_names_the_corrupt_record(tmp_path, folder):
    out = tmp_path / "out"
    manifest = build_folder(folder, out, shard_size=100)
    shard = out / manifest.splits["train"].files[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems, _ = inspect_records.check(str(out))
    assert problems and shard.name in problems[0] and "record" in problems[0]


def test_montage_is_drawn(tmp_path, folder):
    build_folder(folder, tmp_path / "out")
    path = inspect_records.montage(str(tmp_path / "out"), str(tmp_path / "m.png"), samples=9)
    with Image.open(path) as im:
        assert im.size[0] > 100 and np.asarray(im.convert("L")).std() > 10


def test_mistakes_end_in_one_line(tmp_path, folder):
    build_folder(folder, tmp_path / "out")
    with pytest.raises(records.DataError, match="the directory .*nowhere does not exist"):
        inspect_records.montage(str(tmp_path / "out"), str(tmp_path / "nowhere" / "m.png"))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "train-00000-of-00001").write_text("notes, not records")
    with pytest.raises(records.DataError, match=r"train-00000-of-00001: record 0 is corrupt "
                                                r"\(corrupted record at 0"):
        inspect_records.write_manifest(str(tmp_path / "text"))
