import json
import os

import pytest

from kerasbn import report
from kerasbn.analysis import comparison, seeds


def _run(directory, model, accuracies, every=100, lr=0.01, targets=(), finished=True):
    os.makedirs(directory)
    if finished:
        with open(os.path.join(directory, "summary.json"), "w") as f:
            json.dump({"finished": True}, f)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        for i, a in enumerate(accuracies):
            f.write(json.dumps({"iteration": i * every, "wall_time": 2.0 * i * every,
                                "lr": lr, "train_loss": 1.0 / (i + 1), "test_loss": 1.0,
                                "test_top1": a, "test_top5": a, "images_per_sec": 100.0 + i})
                    + "\n")
    with open(os.path.join(directory, "flags.txt"), "w") as f:
        f.write(f"--model={model}\n--norm=keras\n--lr_policy=long_step\n"
                + "".join(f"--target_accuracy={t}\n" for t in targets))
    return str(directory)


def test_table_speedup_and_figures(tmp_path):
    # The study's numbers: 80% at 64k iterations for the baseline, 45k for BN -> 1.42x.
    base = _run(tmp_path / "baseline", "baseline", [0.1] * 64 + [0.8, 0.9], every=1000)
    bn = _run(tmp_path / "bn", "bn", [0.1] * 45 + [0.81, 0.85], every=1000)
    runs = [comparison.load_run(base), comparison.load_run(bn)]
    assert comparison.default_reference(runs) == base
    table = comparison.rows(runs, [0.8, 0.95], base)
    assert table[0]["targets"]["0.8"] == {"iteration": 64000, "wall_time": 128000.0,
                                          "speedup": 1.0, "bound": ""}
    assert table[1]["targets"]["0.8"]["iteration"] == 45000
    assert table[1]["targets"]["0.8"]["speedup"] == pytest.approx(64 / 45)
    assert table[1]["targets"]["0.95"] == {"iteration": None, "wall_time": None,
                                           "speedup": None, "bound": ""}
    assert (table[1]["norm"], table[0]["norm"], table[1]["policy"]) == ("keras", "-",
                                                                         "long_step")
    text = comparison.markdown(table, "baseline")
    assert "| bn | bn | keras | long_step | 0.8500 | 0.8500 (46000) | 45000 | 90000s | 1.42x |" \
        in text
    # Second half of the BN run: tests at 23k..46k, all 0.1 but for the last two (0.81, 0.85).
    assert table[1]["jump"] == pytest.approx((0.71 + 0.04) / 23)
    assert "| 0.033 | 123 |" in text  # images/s: the median of 100 .. 146
    for path in comparison.plot(seeds.group(runs), str(tmp_path)):
        assert os.path.getsize(path) > 10_000


def test_run_in_progress_and_missing_metrics(tmp_path):
    running = _run(tmp_path / "running", "bn", [0.2])
    assert comparison.load_run(running)["entries"][0]["test_top1"] == 0.2
    (tmp_path / "empty").mkdir()
    with pytest.raises(comparison.ReportError, match="no metrics.jsonl"):
        comparison.load_run(str(tmp_path / "empty"))


def test_speedup_is_a_bound_when_only_one_run_reached_the_target(tmp_path):
    # The baseline stops at 74% after 800 iterations; BN reaches 80% at 300: more than
    # 800 / 300 = 2.67x. A BN run stopped at 200 before 70%: less than the baseline's 600 / 200.
    base = _run(tmp_path / "baseline", "baseline", [0.1, 0.3, 0.5, 0.6, 0.65, 0.68, 0.71, 0.73,
                                                      0.74], targets=[0.8, 0.7])
    bn = _run(tmp_path / "bn", "bn", [0.1, 0.5, 0.7, 0.8, 0.9], targets=[0.8])
    short = _run(tmp_path / "short", "bn", [0.1, 0.4, 0.6])
    runs = [comparison.load_run(d) for d in (base, bn, short)]
    assert comparison.tracked_targets(runs) == [("test_top1", 0.7), ("test_top1", 0.8)]
    table = comparison.rows(runs, [0.7, 0.8], base)
    assert table[1]["targets"]["0.8"]["speedup"] == pytest.approx(800 / 300)
    assert table[1]["targets"]["0.8"]["bound"] == ">"
    assert table[1]["targets"]["0.7"]["speedup"] == pytest.approx(600 / 200)
    assert table[2]["targets"]["0.7"]["speedup"] == pytest.approx(600 / 200)
    assert table[2]["targets"]["0.7"]["bound"] == "<"
    assert table[2]["targets"]["0.8"]["speedup"] is None
    text = comparison.markdown(table, "baseline")
    assert "| 300 | 600s | >2.67x |" in text and "| - | - | <3.00x |" in text


@pytest.mark.slow
def test_a_missing_reference_is_one_clear_error(tmp_path):
    import subprocess
    import sys
    run = _run(tmp_path / "bn", "bn", [0.1, 0.5])
    done = subprocess.run([sys.executable, "-m", "kerasbn.report", run,
                           f"--reference={tmp_path / 'nope'}", f"--out={tmp_path / 'out'}"],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"error: {tmp_path / 'nope'} has no metrics.jsonl lines" in done.stderr


def test_bad_targets_and_an_out_that_is_a_file_are_one_line(tmp_path):
    run = _run(tmp_path / "bn", "bn", [0.1, 0.5])
    (tmp_path / "file").write_text("x")
    for args, message in ((["--targets=abc"], "--targets=abc: expected METRIC:VALUE"),
                          (["--targets=80"], "--targets=80: the value must lie in (0, 1]"),
                          ([f"--out={tmp_path / 'file'}"], "is a file")):
        with pytest.raises(SystemExit) as info:
            report.main(["report", run, *args])
        assert message in str(info.value) and "\n" not in str(info.value)


def test_verification_is_tabulated_drawn_and_targeted(tmp_path):
    base = _run(tmp_path / "baseline", "baseline", [0.1, 0.5, 0.7])
    bn = _run(tmp_path / "bn", "bn", [0.1, 0.6, 0.8])
    for directory, accuracies in ((base, [0.5, 0.6, 0.7]), (bn, [0.5, 0.8, 0.9])):
        path = os.path.join(directory, "metrics.jsonl")
        entries = [json.loads(line) for line in open(path)]
        with open(path, "w") as f:
            for entry, accuracy in zip(entries, accuracies):
                f.write(json.dumps(dict(entry, verify_acc=accuracy)) + "\n")
        with open(os.path.join(directory, "flags.txt"), "a") as f:
            f.write("--target=verify_acc:0.75\n")
    runs = [comparison.load_run(base), comparison.load_run(bn)]
    targets = comparison.tracked_targets(runs)
    assert targets == [("test_top1", 0.8), ("verify_acc", 0.75)]
    text = comparison.markdown(comparison.rows(runs, targets, base), "baseline")
    assert "iters to verify_acc:0.75" in text and "| best verify acc |" in text
    assert "| 100 | 200s | >2.00x |" in text  # bn at 100; the baseline never, last test 200
    paths = comparison.plot(seeds.group(runs), str(tmp_path))
    assert os.path.join(str(tmp_path), "verification_vs_iteration.png") in paths


def test_a_target_on_a_metric_no_run_recorded_is_left_out(tmp_path):
    # The quick sets track verify_acc:0.9; on a dataset without a holdout split no run
    # verifies, and "never reached" would misreport a figure that was never measured.
    base = _run(tmp_path / "baseline", "baseline", [0.1, 0.5, 0.7])
    with open(os.path.join(base, "flags.txt"), "a") as f:
        f.write("--target=verify_acc:0.9\n")
    assert comparison.tracked_targets([comparison.load_run(base)]) == [("test_top1", 0.8)]


def test_one_run_twice_or_two_copies_of_one_seed_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = _run(tmp_path / "a", "bn", [0.2, 0.5])
    with pytest.raises(SystemExit, match=r"a/\. is given twice \(as .*a too\)"):
        report.main(["report", a, os.path.join(a, ".")])
    _run(tmp_path / "copy", "bn", [0.2, 0.5])
    with pytest.raises(SystemExit, match="are the same configuration with the same seed 0"):
        report.main(["report", a, str(tmp_path / "copy")])


def test_a_run_with_figures_that_are_not_finite_is_refused_by_line(tmp_path):
    bad = _run(tmp_path / "bad", "bn", [0.2, float("nan"), 0.5])
    with pytest.raises(comparison.ReportError, match=r"metrics.jsonl:2 records test_top1 nan "
                                                     r"at iteration 100"):
        comparison.load_run(bad)


def test_unfinished_runs_are_marked(tmp_path, capsys):
    base = _run(tmp_path / "baseline", "baseline", [0.2, 0.5])
    running = _run(tmp_path / "bn", "bn", [0.3, 0.6], finished=False)
    report.main(["report", base, running, f"--out={tmp_path / 'out'}"])
    out = capsys.readouterr().out
    assert "| bn (unfinished) | bn |" in out and "| baseline |" in out
    assert "1 run(s) marked unfinished" in out


def test_a_torn_last_line_of_a_run_in_progress_is_skipped_with_a_note(tmp_path, capsys):
    """A run being written (or killed mid-line) ends its metrics.jsonl in a torn line: the
    set is reported from its earlier tests, and the note says which line was skipped."""
    base = _run(tmp_path / "baseline", "baseline", [0.2, 0.5])
    running = _run(tmp_path / "bn", "bn", [0.3, 0.6], finished=False)
    with open(os.path.join(running, "metrics.jsonl"), "a") as f:
        f.write('{"iteration": 200, "wall_time": 40')
    report.main(["report", base, running, f"--out={tmp_path / 'out'}"])
    out = capsys.readouterr().out
    assert f"note: {running}/metrics.jsonl ends in a torn line" in out
    assert "| bn (unfinished) | bn | keras | long_step | 0.6000 |" in out
    assert not comparison.load_run(base)["torn"]
