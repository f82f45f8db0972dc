import numpy as np
import pytest
import tensorflow as tf

from conftest import build_folder
from kerasbn.data import records
from kerasbn.evaluation import pairs


def test_lfw_layout_sets_and_a_malformed_line(tmp_path):
    lines = ["2\t1", "a\t1\t2", "a\t1\tb\t3", "b 2 4", "a 2 c 1"]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    read = pairs.read_pairs(str(tmp_path / "pairs.txt"))
    assert [(p.same, p.set) for p in read] == [(True, 0), (False, 0), (True, 1), (False, 1)]
    assert read[1] == pairs.Pair("a", 1, "b", 3, False, 0)
    (tmp_path / "bad.txt").write_text("1\t1\na\t1\tx\nb\t1\tc\t2\n")
    with pytest.raises(records.DataError, match="bad.txt:2: expected"):
        pairs.read_pairs(str(tmp_path / "bad.txt"))
    (tmp_path / "short.txt").write_text("10\t300\na\t1\t2\n")
    with pytest.raises(records.DataError, match="announces 10 sets"):
        pairs.read_pairs(str(tmp_path / "short.txt"))


def test_holdout_pairs_point_at_the_records_they_name(folder, tmp_path):
    out = tmp_path / "out"
    manifest = build_folder(folder, out, holdout_identities=2, pairs=6)
    first, second, same, sets = pairs.holdout_pairs(str(out), manifest)
    assert same.tolist() == [True] * 6 + [False] * 6 and set(sets) == {0}
    files = records.split_files(str(out), manifest, "holdout")
    meta = records.parse_metadata(next(iter(tf.data.TFRecordDataset(files).batch(1000))))
    labels, names = meta["label"], meta["filename"]
    assert np.all(labels[first][same] == labels[second][same])
    assert np.all(names[first][same] != names[second][same])
    assert np.all(labels[first][~same] != labels[second][~same])
    text = (out / "pairs.txt").read_text().splitlines()
    (out / "pairs.txt").write_text("\n".join(text[:1] + [text[1].split("\t")[0] + "\t1\t99"]
                                             + text[2:]) + "\n")
    with pytest.raises(records.DataError, match="pairs.txt:2: .* image 99 is not in the holdout"):
        pairs.holdout_pairs(str(out), manifest)
