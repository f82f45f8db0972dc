import dataclasses
import os
import shutil

import pytest

from kerasbn import compare_norms
from kerasbn.data import records
from kerasbn.flags import cli, train_flags
from kerasbn.runs import test_records
from kerasbn.runs.run_dir import RunDirError, stored_config


def _entries(accuracies, every=10, speed=100.0):
    return [{"iteration": i * every, "test_top1": a, "images_per_sec": speed, "wall_time": i}
            for i, a in enumerate(accuracies)]


def test_stability_is_the_mean_jump_over_the_second_half():
    entries = _entries([0.1, 0.5, 0.9, 0.7, 0.8, 0.6])  # tests at 30, 40, 50 are the tail
    assert test_records.stability(entries) == pytest.approx((0.1 + 0.2) / 2)


def test_summary_table_on_scripted_runs():
    runs = {"keras": [_entries([0.1, 0.85, 0.9]), _entries([0.1, 0.7, 0.95])],
            "bvlc": [_entries([0.1, 0.5, 0.6], speed=50.0), _entries([0.1, 0.4, 0.82],
                                                                    speed=50.0)]}
    rows = {r["norm"]: r for r in compare_norms.summarize(runs, [("test_top1", 0.8)])}
    assert rows["keras"]["final"][0] == pytest.approx(0.925)
    # Sample std over seeds, as the report's: |0.9 - 0.95| / sqrt(2).
    assert rows["keras"]["final"][1] == pytest.approx(0.05 / 2 ** 0.5)
    assert rows["keras"]["to_targets"] == [{"mean": 15, "std": pytest.approx(5 * 2 ** 0.5),
                                            "censored": 0, "seeds": 2}]
    # The seed that never reached 0.8 counts at its last test (20), so 20 is a lower bound.
    assert rows["bvlc"]["to_targets"] == [{"mean": 20, "std": 0.0, "censored": 1,
                                            "seeds": 2}]
    assert rows["bvlc"]["step_time_vs_keras"] == pytest.approx(2.0)
    table = compare_norms.markdown(list(rows.values()), [("test_top1", 0.8)])
    assert "| bvlc | 0.710 ± 0.156 | 0.710 ± 0.156 | >=20 ± 0 | 1/2 |" in table
    assert "| keras | 0.925 ± 0.035 | 0.925 ± 0.035 | 15 ± 7 | 2/2 |" in table


def test_a_verification_target_gets_its_own_columns():
    runs = {"keras": [_entries([0.1, 0.85, 0.9]), _entries([0.1, 0.7, 0.95])]}
    for entries, verified in zip(runs["keras"], ([0.6, 0.8, 0.92], [0.6, 0.95, 0.97])):
        for entry, accuracy in zip(entries, verified):
            entry["verify_acc"] = accuracy
    targets = [("test_top1", 0.8), ("verify_acc", 0.9)]
    [row] = compare_norms.summarize(runs, targets)
    assert [r["mean"] for r in row["to_targets"]] == [15, 15]
    table = compare_norms.markdown([row], targets)
    assert "| iterations to 0.8 | reached 0.8 | iterations to verify_acc:0.9 |" in table
    assert "| 15 ± 7 | 2/2 | 15 ± 7 | 2/2 |" in table


@pytest.mark.slow
def test_real_runs_write_table_and_curves(small_data, tmp_path):
    values, _ = cli.parse(["x", f"--data_dir={small_data}", "--model=bn", "--batch_size=16",
                           "--max_iter=6", "--test_interval=3", "--display=3", "--snapshot=6",
                           "--widths=8,8,8,8,8,8,16", "--bn_momentum=0.9"],
                          compare_norms.define_flags)
    config = train_flags.to_config(values, records.read_manifest(small_data))
    out = str(tmp_path)
    runs = {norm: [compare_norms.run_one(config, norm, 0, out)]
            for norm in ("keras", "windows")}
    assert [e["iteration"] for e in runs["windows"][0]] == [0, 3, 6]
    assert os.path.isfile(os.path.join(out, "windows", "seed0", "flags.txt"))
    compare_norms.plot(runs, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 5_000
    # A rerun (the results/ records of a finished run, say) reads the run instead of training.
    checkpoints = os.path.join(out, "windows", "seed0", "checkpoints")
    shutil.rmtree(checkpoints)
    assert compare_norms.run_one(config, "windows", 0, out) == runs["windows"][0]
    assert not os.path.exists(checkpoints)
    with pytest.raises(RunDirError, match="holds a run with different settings"):
        compare_norms.run_one(dataclasses.replace(config, weight_decay=0.01), "windows", 0,
                              out)


@pytest.mark.slow
def test_each_implementation_keeps_its_own_window_scaled_to_a_short_run(small_data, tmp_path):
    values, _ = cli.parse(["x", f"--data_dir={small_data}", "--model=bn", "--batch_size=16",
                           "--max_iter=4", "--test_interval=2", "--display=2", "--snapshot=4",
                           "--widths=8,8,8,8,8,8,16"], compare_norms.define_flags)
    config = train_flags.to_config(values, records.read_manifest(small_data))
    assert compare_norms.momentum_for(config, "nvidia") == (
        pytest.approx(0.9), "its own 0.999 (a 1000-iteration window) scaled to 4 of 420000 iterations")
    assert compare_norms.momentum_for(config, "bvlc") == (0.999, "its own")
    compare_norms.run_one(config, "nvidia", 0, str(tmp_path))
    stored = stored_config(os.path.join(tmp_path, "nvidia", "seed0"))
    assert stored.bn_momentum == pytest.approx(0.9)
    given = dataclasses.replace(config, bn_momentum=0.5)
    assert compare_norms.momentum_for(given, "nvidia") == (0.5, "--bn_momentum")


@pytest.mark.slow
def test_the_cifar10_comparison_runs_on_the_rgb_stand_in(tmp_path):
    from data_tools import synth
    data = str(tmp_path / "rgb32")
    synth.build(data, 4, 12, 0.25, 32, 0, "raw", 64, False, channels=3)
    out = tmp_path / "norms"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    compare_norms.main(["compare_norms",
                        f"--flagfile={root}/launch/compare_norms_cifar10.flags",
                        f"--data_dir={data}", "--max_iter=4", "--test_interval=2",
                        "--display=2", "--snapshot=4", "--batch_size=8",
                        "--norms=nvidia,bvlc", "--seeds=1", f"--out={out}"])
    config = stored_config(str(out / "nvidia" / "seed0"))
    assert config.model == "cifar10_full_sigmoid_bn" and config.channels == 3
    assert config.bn_momentum == pytest.approx(0.9)  # window 1000 scaled to 4 of 60,000
    assert stored_config(str(out / "bvlc" / "seed0")).bn_momentum == 0.999
    assert (out / "compare_norms.md").exists() and (out / "compare_norms.png").exists()
