import json
import os

import pytest
import tensorflow as tf

from conftest import run_train, train_args
from data_tools import synth
from kerasbn import evaluate
from kerasbn.run_dir import RunDir


@pytest.fixture(scope="module")
def verified_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = str(root / "data")
    synth.build(data, 6, 20, 0.25, 50, 0, "raw", 32, False, holdout_identities=4, pairs=60)
    run_dir = str(root / "run")
    run_train(train_args(data, run_dir, max_iter=20, test_interval=10, verify_split="none"))
    return run_dir


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
    result = evaluate.evaluate_run(verified_run, best=True)
    assert "/best/" in result["checkpoint"]
    assert result["top1"] == pytest.approx(record[-1]["test_top1"])
