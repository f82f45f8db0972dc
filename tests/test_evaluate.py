import json
import os
import pickle

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_train, train_args
from PIL import Image

from kerasbn import evaluate
from kerasbn.data import records
from kerasbn.evaluation import bin_sets, evaluator, pairs
from kerasbn.runs.run_dir import RunDir
from kerasbn.serving import signatures


@pytest.mark.slow
def test_a_run_is_evaluated_closed_set_and_on_unseen_pairs(verified_run, tmp_path, capsys):
    out = tmp_path / "out"
    evaluate.main(["evaluate", f"--run_dir={verified_run}", f"--run_dir={verified_run}",
                   f"--out={out}"])
    results = json.load(open(out / "evaluate.json"))
    assert len(results) == 2 and results[0]["count"] == 30
    assert 0 <= results[0]["top1"] <= results[0]["top5"] <= 1
    worst = results[0]["worst_identities"]
    assert len(worst) == 5 and worst == sorted(worst, key=lambda w: w["accuracy"])
    assert results[0]["verify_pairs"] == {"matched": 60, "mismatched": 60}
    assert 0 <= results[0]["verify_auc"] <= 1
    assert os.path.getsize(out / "roc.png") > 5_000
    assert "| verify acc | AUC | EER |" in capsys.readouterr().out


def test_a_directory_that_is_no_run_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="config.json not found"):
        evaluate.main(["evaluate", f"--run_dir={tmp_path}", f"--out={tmp_path / 'o'}"])


def test_the_best_checkpoint_holds_the_best_test_and_is_evaluated_on_request(verified_run,
                                                                            tmp_path):
    entries = RunDir(verified_run).read_metrics()
    record = [e for k, e in enumerate(entries)
              if k and all(e["test_top1"] > p["test_top1"] for p in entries[:k])]
    best = tf.train.latest_checkpoint(RunDir(verified_run).best)
    if not record:
        assert best is None
        return
    assert best.endswith(f"ckpt-{record[-1]['iteration']}")
    [result] = evaluate.evaluate_run(verified_run, flag_values(checkpoint="best"))
    assert "/best/" in result["checkpoint"]
    assert result["top1"] == pytest.approx(record[-1]["test_top1"])


def flag_values(*argv, **flags):
    values, _ = evaluate.cli.parse(
        ["evaluate", *argv, *(f"--{k}={v}" for k, v in flags.items())], evaluate.define_flags,
        "")
    return values


def test_the_exported_savedmodel_evaluates_as_its_run(verified_run, tmp_path):
    data_dir = json.load(open(os.path.join(verified_run, "config.json")))["data_dir"]
    evaluate.main(["evaluate", f"--run_dir={verified_run}",
                   f"--model={os.path.join(verified_run, 'export')}", f"--data_dir={data_dir}",
                   f"--out={tmp_path}"])
    run, saved = json.load(open(tmp_path / "evaluate.json"))
    for key in ("top1", "top5", "loss", "verify_acc", "verify_auc", "verify_eer"):
        assert saved[key] == pytest.approx(run[key], abs=1e-5), key
    assert saved["worst_identities"] == run["worst_identities"]


def write_photos(data_dir, root):
    """The holdout records as PNG files in LFW's layout (identity/file)."""
    manifest = records.read_manifest(data_dir)
    files = records.split_files(data_dir, manifest, "holdout")
    for batch in tf.data.TFRecordDataset(files).batch(1000):
        meta = records.parse_metadata(batch)
        images, _ = records.parse_batch(batch, manifest.image_size, 1, manifest.encoding)
        for name, image in zip(meta["filename"], images.numpy()):
            path = root / name.decode()
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(path)


def test_pairs_over_a_folder_of_photos_verify_as_the_same_pairs_over_the_records(
        verified_run, tmp_path):
    data_dir = json.load(open(os.path.join(verified_run, "config.json")))["data_dir"]
    write_photos(data_dir, tmp_path / "lfw")
    [records_result] = evaluate.evaluate_run(verified_run, flag_values())
    [photos] = evaluate.evaluate_run(verified_run, flag_values(
        pairs=os.path.join(data_dir, "pairs.txt"), image_root=tmp_path / "lfw"))
    assert photos["verify_pairs"] == records_result["verify_pairs"]
    for key in ("verify_acc", "verify_auc", "verify_eer"):
        assert photos[key] == pytest.approx(records_result[key], abs=1e-6), key
    assert photos["roc"] == records_result["roc"]


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_photos_are_resized_as_the_training_dataset_was(mode, tmp_path):
    Image.new("L", (100, 50), 200).save(tmp_path / "wide.png")
    served = signatures.Served("net", None, (20, 20), 1, mode, 3)
    photo = evaluator.load_photos([str(tmp_path / "wide.png")], served)[0, ..., 0]
    assert photo.shape == (20, 20)
    # pad keeps the whole 2:1 photo and fills the rest black; crop keeps its middle square.
    assert (photo[:4] == 0).all() == (mode == "pad") and (photo[8:12] == 200).all()


def test_a_pairs_line_naming_a_missing_photo_is_one_line_naming_it(verified_run, tmp_path):
    (tmp_path / "lfw" / "Ann").mkdir(parents=True)
    Image.new("L", (50, 50)).save(tmp_path / "lfw" / "Ann" / "Ann_0001.jpg")
    (tmp_path / "pairs.txt").write_text("1\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\n")
    with pytest.raises(SystemExit, match=r"pairs.txt:2: Ann image 2 is not in .*lfw "
                                         r"\(1 images of Ann\)"):
        evaluate.main(["evaluate", f"--run_dir={verified_run}", f"--out={tmp_path / 'o'}",
                       f"--pairs={tmp_path / 'pairs.txt'}", f"--image_root={tmp_path / 'lfw'}"])


@pytest.mark.parametrize("argv, message", [
    ([], "give one or more --run_dir"),
    (["--model=m"], "--model needs --data_dir"),
    (["--model=m", "--pairs=p.txt"], "--pairs and --image_root go together"),
    (["--model=m", "--data_dir=d"], "m is not a SavedModel written by kerasbn.export"),
    (["--run_dir=r", "--split=holdout"], "--split=holdout: the holdout people were never "
                                        "trained on"),
])
def test_flag_combinations_that_cannot_work_are_one_line(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        evaluate.main(["evaluate", *argv])


def write_bin(path, encoded, same):
    """An insightface .bin: the pickled (encoded images, same flags), pair i = images 2i, 2i+1
    (as insightface's lfw2pack.py writes it)."""
    with open(path, "wb") as f:
        pickle.dump((encoded, same), f, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.fixture(scope="module")
def lfw_like(verified_run, tmp_path_factory):
    """(photo folder, pairs.txt, .bin) of the run's holdout pairs: ten LFW sets of 6 matched
    then 6 mismatched pairs, and a .bin of the same pairs in the same order, whose ten
    contiguous folds are those sets."""
    tmp_path = tmp_path_factory.mktemp("lfw_like")
    data_dir = json.load(open(os.path.join(verified_run, "config.json")))["data_dir"]
    root = tmp_path / "lfw"
    write_photos(data_dir, root)
    listed = pairs.read_pairs(os.path.join(data_dir, "pairs.txt"))
    matched = [p for p in listed if p.same]
    mismatched = [p for p in listed if not p.same]
    lines = ["10\t6"]
    for k in range(10):
        lines += [f"{p.first}\t{p.index_first}\t{p.index_second}" for p in matched[6 * k:6 * k + 6]]
        lines += [f"{p.first}\t{p.index_first}\t{p.second}\t{p.index_second}"
                  for p in mismatched[6 * k:6 * k + 6]]
    (tmp_path / "pairs10.txt").write_text("\n".join(lines) + "\n")
    files, first, second, same, _ = pairs.file_pairs(str(tmp_path / "pairs10.txt"), str(root))
    encoded = [open(files[i], "rb").read() for pair in zip(first, second) for i in pair]
    write_bin(str(tmp_path / "lfw.bin"), encoded, [bool(x) for x in same])
    return root, tmp_path / "pairs10.txt", tmp_path / "lfw.bin"


def test_a_bin_set_verifies_as_the_same_pairs_over_photos_with_the_same_ten_sets(
        verified_run, lfw_like, tmp_path, capsys):
    root, pairs10, lfw_bin = lfw_like
    [photos] = evaluate.evaluate_run(verified_run, flag_values(pairs=pairs10, image_root=root))
    out = tmp_path / "out"
    evaluate.main(["evaluate", f"--model={os.path.join(verified_run, 'export')}",
                   f"--bin={lfw_bin}", f"--out={out}"])
    [binned] = json.load(open(out / "evaluate.json"))
    assert binned["set"] == "lfw" and binned["verify_pairs"] == {"matched": 60, "mismatched": 60}
    for key in ("verify_acc", "verify_acc_std", "verify_auc", "verify_eer"):
        assert binned[key] == pytest.approx(photos[key], abs=1e-6), key
    assert "export on lfw | " in capsys.readouterr().out
    assert os.path.getsize(out / "roc.png") > 5_000


@pytest.mark.slow
def test_training_tracks_a_bin_set_as_evaluate_scores_the_same_checkpoint(verified_run,
                                                                         lfw_like, tmp_path,
                                                                         capsys):
    data_dir = json.load(open(os.path.join(verified_run, "config.json")))["data_dir"]
    run_dir = str(tmp_path / "run")
    run_train(train_args(data_dir, run_dir, max_iter=10, test_interval=5,
                         verify_bin=lfw_like[2]))
    out = capsys.readouterr().out
    assert "lfw iter 10: accuracy " in out and "verify iter 10: accuracy " in out
    last = RunDir(run_dir).read_metrics()[-1]
    assert last["lfw_pairs"] == {"matched": 60, "mismatched": 60}
    [_, binned] = evaluate.evaluate_run(run_dir, flag_values(bin=lfw_like[2]))
    for key in ("acc", "acc_std", "auc", "eer"):
        assert last[f"lfw_{key}"] == pytest.approx(binned[f"verify_{key}"], abs=1e-5), key


def test_a_file_that_is_no_bin_set_is_one_line(verified_run, tmp_path):
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(os.system, f)
    with pytest.raises(SystemExit, match=r"evil.bin is not an insightface .bin verification "
                                         r"set \(it names posix.system\)"):
        evaluate.main(["evaluate", f"--run_dir={verified_run}", f"--bin={tmp_path / 'evil.bin'}",
                       f"--out={tmp_path / 'o'}"])
    write_bin(str(tmp_path / "odd.bin"), [b"x"] * 3, [True])
    with pytest.raises(SystemExit, match="holds 3 images for 1 pairs"):
        evaluate.main(["evaluate", f"--run_dir={verified_run}", f"--bin={tmp_path / 'odd.bin'}",
                       f"--out={tmp_path / 'o'}"])


@pytest.mark.parametrize("same, message", [
    (["True", "False"] * 3, "a same flag is str 'True', not a boolean"),
    ([1, 0] * 3, "a same flag is int 1, not a boolean"),
    ([True] * 6, "holds 6 matched and 0 mismatched pairs; verification needs both kinds"),
    ([False] * 6, "holds 0 matched and 6 mismatched pairs; verification needs both kinds"),
])
def test_a_bin_set_whose_flags_cannot_be_trusted_is_refused(same, message, tmp_path):
    write_bin(str(tmp_path / "set.bin"), [b"x"] * 12, same)
    with pytest.raises(records.DataError, match=message):
        bin_sets.read(str(tmp_path / "set.bin"))


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_python3_bin_pickles_of_every_protocol_are_read(protocol, tmp_path):
    # Protocols 0-2 store bytes through _codecs.encode, which the reader allows alone.
    with open(tmp_path / "set.bin", "wb") as f:
        pickle.dump(([b"\x00\xffa", b"b"] * 2, [True, False]), f, protocol=protocol)
    encoded, same = bin_sets.read(str(tmp_path / "set.bin"))
    assert encoded == [b"\x00\xffa", b"b"] * 2 and same.tolist() == [True, False]


def test_a_pairs_file_of_one_kind_is_refused(tmp_path):
    (tmp_path / "pairs.txt").write_text("1\t2\nA\t1\t2\nA\t1\t3\nB\t1\t2\nB\t2\t3\n")
    with pytest.raises(records.DataError, match="4 matched and 0 mismatched"):
        pairs.read_pairs(str(tmp_path / "pairs.txt"))
    (tmp_path / "bad.txt").write_bytes(b"1\t1\nA\t1\t\xff\nA\t1\tB\t2\n")
    with pytest.raises(records.DataError, match="bad.txt is not UTF-8 text"):
        pairs.read_pairs(str(tmp_path / "bad.txt"))


def test_bin_folds_are_insightfaces_ten_contiguous_runs():
    assert bin_sets.folds(23).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] + sum(
        ([k, k] for k in range(3, 10)), [])
    assert np.bincount(bin_sets.folds(6000)).tolist() == [600] * 10


def test_a_missing_verify_bin_stops_training_in_one_line(verified_run, tmp_path):
    data_dir = json.load(open(os.path.join(verified_run, "config.json")))["data_dir"]
    with pytest.raises(SystemExit, match=r"nowhere/lfw.bin not found: give an insightface"):
        run_train(train_args(data_dir, str(tmp_path / "run"), max_iter=10, test_interval=5,
                             verify_bin=tmp_path / "nowhere" / "lfw.bin"))


def test_a_bin_sets_colour_jpegs_turn_gray_as_pillows_convert_l():
    import io

    from kerasbn.data import images
    rng = np.random.default_rng(4)
    encoded = []
    for _ in range(4):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), np.uint8)).save(buffer, "JPEG")
        encoded.append(buffer.getvalue())
    loaded = images.load_batch([io.BytesIO(e) for e in encoded], 1, 112, "crop",
                               lambda i: f"image {i}")
    for array, data in zip(loaded, encoded):
        want = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        np.testing.assert_array_equal(array[..., 0], want)
