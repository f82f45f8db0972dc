import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_prints_the_sets_commands_then_the_report():
    done = subprocess.run([sys.executable, "-m", "kerasbn.launch", "study_quick", "--dry_run",
                           "--data_dir=data/other", "--precision=float32"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = ["1_baseline_long_step", "2_bn_long_step", "3_bn_short_step",
             "4_bn_multistep_no_dropout"]
    for line, name in zip(lines, names):
        assert line.endswith(f"-m kerasbn.train --flagfile=launch/sets/study_quick/{name}.flags"
                             " --data_dir=data/other --precision=float32")
    assert lines[4].endswith("-m kerasbn.report runs/study_quick/baseline_long_step "
                             "runs/study_quick/bn_long_step runs/study_quick/bn_short_step "
                             "runs/study_quick/bn_multistep_no_dropout "
                             "--out=runs/study_quick/report")
    assert len(lines) == 5
    assert done.stderr == ""


def test_sets_are_found_from_any_directory(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kerasbn.launch", "study_quick", "--dry_run"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0].split("--flagfile=")[1]
    assert os.path.isabs(first) and os.path.isfile(first)


def test_every_set_flagfile_is_a_valid_training_flagfile(tmp_path, monkeypatch):
    from kerasbn import cli, launch, train_flags
    monkeypatch.chdir(tmp_path)  # nested --flagfile paths resolve beside the including file
    sets = launch.sets_dir()
    for name in sorted(os.listdir(sets)):
        for flagfile in sorted(os.listdir(os.path.join(sets, name))):
            values, _ = cli.parse(["x", f"--flagfile={os.path.join(sets, name, flagfile)}"],
                                  train_flags.define)
            config = train_flags.schedule_config(values)
            assert values.run_dir.startswith(f"runs/{name}/"), flagfile
            if "multistep_no_dropout" in flagfile:
                assert config.lr_policy == "multistep_no_dropout"
                assert not values.dropout  # 0, or the BN networks' default 0
            if "long_step" in flagfile or "short_step" in flagfile:
                assert values.dropout == 0.4


def test_run_root_moves_every_run_and_the_report():
    from kerasbn import launch
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        runs, report = launch.commands("study_quick", ["--data_dir=data/att"],
                                       run_root="runs/att", reference="runs/best")
    finally:
        os.chdir(cwd)
    assert [r[-2:] for r in runs] == [
        ["--data_dir=data/att", "--run_dir=runs/att/baseline_long_step"],
        ["--data_dir=data/att", "--run_dir=runs/att/bn_long_step"],
        ["--data_dir=data/att", "--run_dir=runs/att/bn_short_step"],
        ["--data_dir=data/att", "--run_dir=runs/att/bn_multistep_no_dropout"]]
    assert report[3:] == ["runs/att/baseline_long_step", "runs/att/bn_long_step",
                          "runs/att/bn_short_step", "runs/att/bn_multistep_no_dropout",
                          "--out=runs/att/report", "--reference=runs/best"]
