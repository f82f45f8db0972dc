import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
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


@pytest.mark.slow
def test_sets_are_found_from_any_directory(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kerasbn.launch", "study_quick", "--dry_run"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0].split("--flagfile=")[1]
    assert os.path.isabs(first) and os.path.isfile(first)


def test_every_set_flagfile_is_a_valid_training_flagfile(tmp_path, monkeypatch):
    from kerasbn import launch
    from kerasbn.flags import cli, train_flags
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
        plan = launch.commands("study_quick", ["--data_dir=data/att"], run_root="runs/att")
    finally:
        os.chdir(cwd)
    assert [r["command"][-2:] for r in plan] == [
        ["--data_dir=data/att", "--run_dir=runs/att/baseline_long_step"],
        ["--data_dir=data/att", "--run_dir=runs/att/bn_long_step"],
        ["--data_dir=data/att", "--run_dir=runs/att/bn_short_step"],
        ["--data_dir=data/att", "--run_dir=runs/att/bn_multistep_no_dropout"]]
    report = launch.report_command("study_quick", [r["run_dir"] for r in plan],
                                   run_root="runs/att", reference="runs/best")
    assert report[3:] == ["runs/att/baseline_long_step", "runs/att/bn_long_step",
                          "runs/att/bn_short_step", "runs/att/bn_multistep_no_dropout",
                          "--out=runs/att/report", "--reference=runs/best"]


def _launch(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "kerasbn.launch", *args], cwd=cwd,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_a_sweep_runs_the_first_seed_at_every_value_before_it_chooses():
    done = _launch("study_quick", "--dry_run", "--seeds=3", "--sweep=base_lr=0.01,0.05",
                   "--run_root=runs/never_run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4 * 2 + 1
    assert lines[0].endswith("--flagfile=launch/sets/study_quick/1_baseline_long_step.flags "
                             "--base_lr=0.01 --seed=0 "
                             "--run_dir=runs/never_run/baseline_long_step-base_lr0.01-seed0")
    assert lines[4].endswith("--base_lr=0.05 --seed=0 "
                             "--run_dir=runs/never_run/baseline_long_step-base_lr0.05-seed0")
    assert all("--seed=0" in line for line in lines[:-1])
    assert lines[-1].startswith("# seeds 1-2 follow at each configuration's best base_lr")


SWEPT = {"baseline": {"0.01": [0.3, 0.6, 0.7], "0.02": [0.5, 0.85, 0.9],
                      "0.05": [0.4, 0.7, 0.82]},
         "bn": {"0.01": [0.6, 0.85, 0.9], "0.02": [0.7, 0.9, 0.95], "0.05": [0.81, 0.9, 0.9]}}


def _swept_set(tmp_path):
    """A set of a baseline and a BN flagfile, and the records of their finished first-seed
    runs at three rates (test top-1 at iterations 100, 200, 300 from SWEPT): the baseline
    first reaches 0.8 at 0.02, the BN network at 0.05."""
    import json
    set_dir = tmp_path / "sets" / "pair"
    set_dir.mkdir(parents=True)
    for index, net in enumerate(SWEPT, start=1):
        (set_dir / f"{index}_{net}.flags").write_text(
            f"--model={net}\n--run_dir={tmp_path}/runs/{net}\n")
        for rate, curve in SWEPT[net].items():
            run_dir = tmp_path / "runs" / f"{net}-base_lr{rate}-seed0"
            run_dir.mkdir(parents=True)
            (run_dir / "flags.txt").write_text(f"--model={net}\n--base_lr={rate}\n--seed=0\n")
            (run_dir / "metrics.jsonl").write_text("".join(
                json.dumps({"iteration": 100 * (k + 1), "wall_time": 10.0 * (k + 1),
                            "test_top1": top1}) + "\n"
                for k, top1 in enumerate(curve)))
            (run_dir / "summary.json").write_text(json.dumps({"finished": True}))
    return str(set_dir)


@pytest.mark.slow
def test_a_sweep_runs_later_seeds_at_each_best_value_and_the_references():
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        from pathlib import Path
        set_dir = _swept_set(Path(tmp))
        done = _launch(set_dir, "--dry_run", "--seeds=3", "--sweep=base_lr=0.01,0.02,0.05")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    first, later, report = lines[:6], lines[6:-1], lines[-1]
    assert all("--seed=0" in line for line in first)
    # The baseline at its best (0.02); the BN network at its own (0.05) and the baseline's.
    assert [line.split("--run_dir=")[1].rsplit("/", 1)[1] for line in later] == [
        "baseline-base_lr0.02-seed1", "bn-base_lr0.02-seed1", "bn-base_lr0.05-seed1",
        "baseline-base_lr0.02-seed2", "bn-base_lr0.02-seed2", "bn-base_lr0.05-seed2"]
    assert len(report.split("kerasbn.report ")[1].split(" --out=")[0].split()) == 12
    assert report.endswith("--sweep=base_lr")


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--seeds=2", "--sweep=base_lr=0.01,0.02"], "give --seeds=3 or more"),
    (["--seeds=3", "--sweep=base_rate=0.01"], "--sweep=base_rate=0.01: give a training flag"),
    (["--seeds=3", "--sweep=base_lr="], "--sweep=base_lr=: give a training flag"),
    (["--seeds=3", "--sweep=seed=1,2"], "--sweep=seed=1,2: the launcher sets --seed"),
    (["--seeds=3", "--sweep=run_dir=a,b"], "--sweep=run_dir=a,b: the launcher sets --run_dir"),
    (["--seeds=3", "--sweep=base_lr=0.01", "--sweep=base_lr=0.02"],
     "--sweep=base_lr=0.02: --base_lr is swept twice"),
    (["--seeds=3", "--sweep=base_lr=0.01,0.01"], "a value is listed twice"),
    (["--seeds=3", "--sweep=base_lr=abc,def"], "abc is no value of --base_lr"),
    (["--seeds=3", "--sweep=norm=keras,foo"], "foo is no value of --norm"),
])
def test_a_sweep_that_cannot_report_a_spread_or_names_no_flag_is_refused(args, message):
    done = _launch("study_quick", "--dry_run", *args)
    assert done.returncode == 1 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _fake_runs(tmp_path, count):
    """Commands standing in for training: each writes its run's export marker."""
    from kerasbn.runs import export_layout
    from kerasbn.runs.run_dir import RunDir
    dirs = [str(tmp_path / f"run{k}") for k in range(count)]
    script = ("import os, sys; os.makedirs(sys.argv[1], exist_ok=True); "
              f"open(os.path.join(sys.argv[1], {export_layout.MARKER!r}), 'w').write('{{}}')")
    return [[sys.executable, "-c", script, RunDir(d).export] for d in dirs], dirs


def test_a_launcher_skips_finished_runs_and_runs_another_process_trains(tmp_path, capsys):
    from kerasbn import launch
    from kerasbn.runs.run_dir import RunDir
    runs, dirs = _fake_runs(tmp_path, 3)
    assert subprocess.run(runs[0]).returncode == 0
    with RunDir(dirs[1]).lock():
        launch.work_through(runs, dirs)
    out = capsys.readouterr().out
    assert f"run 1/3: {dirs[0]} finished" in out
    assert f"run 2/3: {dirs[1]} is being trained by another process" in out
    assert [launch.finished(d) for d in dirs] == [True, False, True]


def test_a_sweep_waits_for_first_seed_runs_another_process_trains(tmp_path, monkeypatch,
                                                                   capsys):
    from kerasbn import launch
    from kerasbn.runs.run_dir import RunDir
    commands, dirs = _fake_runs(tmp_path, 2)
    runs = [{"command": c, "run_dir": d} for c, d in zip(commands, dirs)]
    slept = []

    def other_process_finishes(seconds):
        slept.append(seconds)
        subprocess.run(commands[1], check=True)

    monkeypatch.setattr(launch.time, "sleep", other_process_finishes)
    with RunDir(dirs[1]).lock():
        assert launch.train_all(runs, wait=True) == []
    assert slept == [launch.WAIT_SECONDS]
    assert "waiting for 1 first-seed runs other processes are training" in capsys.readouterr().out


def test_a_run_claimed_between_the_check_and_the_start_is_left_to_its_claimer(tmp_path,
                                                                                capsys):
    from kerasbn import launch, train
    runs, dirs = _fake_runs(tmp_path, 2)
    runs[0] = [sys.executable, "-c", f"raise SystemExit({train.BUSY_EXIT})"]
    launch.work_through(runs, dirs)
    assert "run 1/2: " + dirs[0] + " is being trained by another process" in \
        capsys.readouterr().out
    assert launch.finished(dirs[1])


@pytest.mark.slow
def test_training_in_a_locked_run_dir_exits_busy(small_data, tmp_path):
    from kerasbn import train
    from kerasbn.runs.run_dir import RunDir
    run_dir = str(tmp_path / "claimed")
    with RunDir(run_dir).lock():
        done = subprocess.run([sys.executable, "-m", "kerasbn.train", f"--data_dir={small_data}",
                               f"--run_dir={run_dir}", "--max_iter=1", "--test_interval=1"],
                              cwd=ROOT,
                              capture_output=True, text=True)
    assert done.returncode == train.BUSY_EXIT
    assert "is in use by another training process" in done.stderr


def test_quick_sets_run_the_study_as_it_ran(tmp_path, monkeypatch):
    # One learning rate for all four, NVIDIA Caffe's BN for the BN runs, its averaging window
    # scaled with the run length, and the schedule no longer than the run.
    from kerasbn import launch
    from kerasbn.flags import cli, train_flags
    monkeypatch.chdir(tmp_path)
    parsed = {}
    for path in launch.set_flagfiles(os.path.join(launch.sets_dir(), "study_quick")):
        values, _ = cli.parse(["x", f"--flagfile={path}"], train_flags.define)
        parsed[os.path.basename(path)] = values
    assert {v.base_lr for v in parsed.values()} == {0.02}
    for name, values in parsed.items():
        if values.model == "baseline":
            continue
        window = max(10, round(1000 * values.max_iter / 420000))
        assert values.norm == "nvidia" and values.bn_momentum == pytest.approx(1 - 1 / window)
    assert {v.max_iter for v in parsed.values()} == {2400}


def test_the_quickstart_networks_differ_only_in_what_the_study_changed(tmp_path, monkeypatch):
    from kerasbn.flags import cli, train_flags
    monkeypatch.chdir(tmp_path)
    settings = {}
    for net in ("baseline", "bn"):
        values, _ = cli.parse(["x", f"--flagfile={ROOT}/launch/quickstart/{net}.flags"],
                              train_flags.define)
        settings[net] = {name: values[name].value for name in values}
    differ = {k for k in settings["bn"] if settings["bn"][k] != settings["baseline"][k]}
    assert differ == {"model", "norm", "bn_momentum"}


RECORDS = ("config.json", "flags.txt", "metrics.jsonl", "summary.json")


def _records_only(run_dir, to):
    """A copy of a run's records without its checkpoints, export or logs (results/ in git)."""
    import shutil
    os.makedirs(to)
    for name in RECORDS:
        shutil.copy(os.path.join(run_dir, name), to)
    return str(to)


@pytest.mark.slow
def test_the_records_of_a_finished_run_count_as_finished_without_its_checkpoints(
        finished_run, tmp_path):
    import json

    from kerasbn import launch
    from kerasbn.analysis import comparison
    copy = _records_only(finished_run, tmp_path / "copy")
    assert launch.finished(finished_run) and launch.finished(copy)
    assert sorted(os.listdir(copy)) == sorted(RECORDS)
    # The report reads the records alone and tabulates the copy as the run itself.
    assert comparison.load_run(copy)["entries"] == comparison.load_run(finished_run)["entries"]
    summary = os.path.join(copy, "summary.json")
    with open(summary, encoding="utf-8") as f:
        values = json.load(f)
    del values["finished"]  # the summary a test in the middle of the run writes
    with open(summary, "w", encoding="utf-8") as f:
        json.dump(values, f)
    assert not launch.finished(copy)


@pytest.mark.slow
def test_a_run_killed_in_its_export_is_not_finished(small_data, tmp_path, monkeypatch):
    from conftest import run_train, train_args

    from kerasbn import launch
    from kerasbn.runs.run_dir import RunDir
    from kerasbn.serving import exporter

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    run_dir = str(tmp_path / "run")
    args = train_args(small_data, run_dir, max_iter=10)
    with monkeypatch.context() as patch:
        patch.setattr(exporter, "export_saved_model", killed)
        with pytest.raises(SystemExit, match="130"):
            run_train(args)
    assert RunDir(run_dir).read_metrics()[-1]["iteration"] == 10
    assert not launch.finished(run_dir)
    run_train(args)
    assert launch.finished(run_dir) and RunDir(run_dir).finished()


def test_a_swept_value_cannot_place_a_run_outside_the_run_root(tmp_path):
    from kerasbn import launch
    sweeps = launch.parse_sweep(["weights=../../elsewhere/run,/abs/run"])
    plan = launch.commands("study_quick", [], str(tmp_path / "root"), 3, sweeps)
    for run in plan:
        real = os.path.realpath(run["run_dir"])
        assert os.path.dirname(real) == os.path.realpath(tmp_path / "root"), run["run_dir"]
    assert any(run["run_dir"].endswith("-weights.._.._elsewhere_run-seed0") for run in plan)
