import json
import os

import pytest

from kerasbn import report


def _run(directory, model, accuracies, every=100, lr=0.01):
    os.makedirs(directory)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        for i, a in enumerate(accuracies):
            f.write(json.dumps({"iteration": i * every, "wall_time": 2.0 * i * every,
                                "lr": lr, "train_loss": 1.0 / (i + 1), "test_loss": 1.0,
                                "test_top1": a, "test_top5": a, "images_per_sec": 100.0 + i})
                    + "\n")
    with open(os.path.join(directory, "flags.txt"), "w") as f:
        f.write(f"--model={model}\n--norm=keras\n--lr_policy=long_step\n")
    return str(directory)


def test_table_speedup_and_figures(tmp_path):
    # The study's numbers: 80% at 64k iterations for the baseline, 45k for BN -> 1.42x.
    base = _run(tmp_path / "baseline", "baseline", [0.1] * 64 + [0.8, 0.9], every=1000)
    bn = _run(tmp_path / "bn", "bn", [0.1] * 45 + [0.81, 0.85], every=1000)
    runs = [report.load_run(base), report.load_run(bn)]
    assert report.default_reference(runs) == base
    table = report.rows(runs, [0.8, 0.95], base)
    assert table[0]["targets"]["0.8"] == {"iteration": 64000, "wall_time": 128000.0,
                                          "speedup": 1.0}
    assert table[1]["targets"]["0.8"]["iteration"] == 45000
    assert table[1]["targets"]["0.8"]["speedup"] == pytest.approx(64 / 45)
    assert table[1]["targets"]["0.95"] == {"iteration": None, "wall_time": None,
                                           "speedup": None}
    assert (table[1]["norm"], table[0]["norm"], table[1]["policy"]) == ("keras", "-",
                                                                         "long_step")
    text = report.markdown(table, "baseline")
    assert "| bn | bn | keras | long_step | 0.8500 | 0.8500 (46000) | 45000 | 90000s | 1.42x |" \
        in text
    for path in report.plot(runs, str(tmp_path)):
        assert os.path.getsize(path) > 10_000


def test_run_in_progress_and_missing_metrics(tmp_path):
    running = _run(tmp_path / "running", "bn", [0.2])
    assert report.load_run(running)["entries"][0]["test_top1"] == 0.2
    (tmp_path / "empty").mkdir()
    with pytest.raises(report.ReportError, match="no metrics.jsonl"):
        report.load_run(str(tmp_path / "empty"))
