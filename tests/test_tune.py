"""kerasbn.tune: space files checked as flags are, the objective and how it meets the
pruner, and real studies (trials as training processes) on SQLite and, where a server is
found, PostgreSQL: two processes sharing a study, a tune killed by SIGKILL and rerun, and
trials made to fall behind pruned at the first rung."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from kerasbn import report, tune
from kerasbn.flags import train_flags
from kerasbn.runs.run_dir import RunDir
from kerasbn.tuning import objective, results, space, study as study_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_QUICK = os.path.join(REPO, "launch", "tune", "study_quick.yaml")
# A small BN run on conftest's small_data: tests every 10 iterations.
BASE = ["--model=bn", "--batch_size=16", "--widths=16,16,32,24,48,40,64", "--bn_momentum=0.9",
        "--max_iter=30", "--test_interval=10", "--snapshot=10", "--display=10",
        "--precision=float32", "--seed=1", "--verify_interval=0"]


def write_space(tmp_path, search, base=BASE, name="space.yaml"):
    (tmp_path / "base.flags").write_text("\n".join(base) + "\n")
    path = tmp_path / name
    path.write_text("base: base.flags\nsearch:\n" + "".join(f"  {line}\n" for line in search))
    return str(path)


def study_args(tmp_path, small_data, search, max_iter, test_interval, *extra):
    """(study dir, tune's arguments) of a study of `search` over a short BN run on
    small_data, tested and checkpointed every `test_interval` iterations."""
    space_file = write_space(tmp_path, search, base=BASE[:4] + [
        f"--max_iter={max_iter}", f"--test_interval={test_interval}",
        f"--snapshot={test_interval}", "--precision=float32"])
    study_dir = str(tmp_path / "study")
    return study_dir, [f"--space={space_file}", f"--data_dir={small_data}",
                       f"--study_dir={study_dir}", *extra]


def test_the_study_quick_space_searches_the_studys_question_and_its_grid_counts_by_hand():
    loaded = space.load(STUDY_QUICK)
    assert [e.name for e in loaded.entries] == ["model", "norm", "lr_policy", "base_lr"]
    norm = loaded.entries[1]
    assert norm.when == (("model", ("bn",)),)
    # baseline, or bn under three BN layers; three policies; four rates.
    grid = loaded.grid()
    assert len(grid) == (1 + 3) * 3 * 4
    assert sum("norm" in p for p in grid) == 3 * 3 * 4
    assert all(p["model"] == "bn" for p in grid if "norm" in p)
    assert len({json.dumps(p, sort_keys=True) for p in grid}) == len(grid)


def test_a_trial_draws_only_the_entries_whose_condition_holds():
    loaded = space.load(STUDY_QUICK)
    fixed = optuna.trial.FixedTrial({"model": "baseline", "lr_policy": "short_step",
                                     "base_lr": 0.01})
    assert loaded.sample(fixed) == {"model": "baseline", "lr_policy": "short_step",
                                    "base_lr": 0.01}
    fixed = optuna.trial.FixedTrial({"model": "bn", "norm": "bvlc", "lr_policy": "long_step",
                                     "base_lr": 0.02})
    assert loaded.flags(loaded.sample(fixed)) == [
        "--model=bn", "--norm=bvlc", "--lr_policy=long_step", "--base_lr=0.02"]


@pytest.mark.parametrize("search, message", [
    (["base_lr: {low: -0.1, high: 0.1}"], "--base_lr must be positive, got -0.1"),
    (["norm: [nvidia, cudnn]"], "--norm=cudnn is not one of"),
    (["momentum: {low: 0.5, high: 1.5}"], "--momentum must lie in"),
    (["bn_momentum: {low: 0.9, high: 0.99, when: {model: bn}}", "model: [baseline, bn]"],
     "bn_momentum's when names model, which is not searched above it"),
    (["lr_policy: {low: 1, high: 2}"], "lr_policy is a enum setting; give it a list"),
    (["max_iter: [100, 200]"], "max_iter is the same for every trial"),
    (["learning_rate: [0.1, 0.2]"], "learning_rate is no training setting"),
    (["base_lr: {low: 0.1, high: 0.01}"], "needs low < high"),
    (["base_lr: {low: 0.01, high: 0.1, grid: [0.5]}"], "grid values must lie in"),
    (["dropout: 0.2"], "lists no setting with choices or a range"),
    (["base_lr: {low: 0.01, high: 0.1, log: true, step: 0.01}"], "log or step, not both"),
])
def test_a_space_asking_for_the_impossible_is_refused_in_one_line_naming_the_setting(
        tmp_path, search, message):
    with pytest.raises(space.SpaceError) as info:
        space.load(write_space(tmp_path, search))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_range_without_grid_values_has_no_grid_and_says_which(tmp_path):
    loaded = space.load(write_space(tmp_path, ["base_lr: {low: 0.01, high: 0.1, log: true}"]))
    assert results.grid_cost(loaded, 100)[0] is None
    assert "base_lr is a range without grid values" in results.grid_cost(loaded, 100)[1]


def test_the_objective_ranks_reaching_trials_first_and_the_rest_by_their_best_figure():
    target = ("test_top1", 0.8)
    entry = lambda i, top1, t=0.0: {"iteration": i, "test_top1": top1, "wall_time": t}
    fast = [entry(0, 0.1), entry(50, 0.85, 9.0)]
    slow = [entry(0, 0.1), entry(50, 0.5), entry(100, 0.81, 20.0)]
    close = [entry(0, 0.1), entry(50, 0.79)]
    far = [entry(0, 0.1), entry(50, 0.3)]
    values = [objective.value(e, target, "iterations", 100) for e in (fast, slow, close, far)]
    assert values == [50, 100, pytest.approx(100 * 1.21), pytest.approx(100 * 1.7)]
    assert objective.value(slow, target, "seconds", 3600) == 20.0
    assert objective.value(far, target, "seconds", 3600) == pytest.approx(3600 * 1.7)
    # As the tests come in, the value never rises (what the pruner compares at a rung).
    so_far = [objective.value(slow[:k], target, "iterations", 100) for k in range(1, 4)]
    assert so_far == sorted(so_far, reverse=True)


def test_successive_halving_on_the_objective_stops_the_curves_that_fall_behind():
    """The pruner as tune builds it, fed each test's objective so far: a good curve goes on,
    a tiny rate's and a diverging one's stop at the first rung (the first test)."""
    study = optuna.create_study(direction="minimize",
                                pruner=study_lib.pruner("halving", 10, 40))
    target = ("test_top1", 0.9)
    curves = {"good": [0.2, 0.5, 0.7, 0.95], "tiny": [0.17, 0.18, 0.2, 0.2],
              "diverging": [0.1, 0.0, 0.0, 0.0]}
    stopped = {}
    for name, figures in curves.items():
        trial = study.ask()
        entries = []
        for step, figure in zip((10, 20, 30, 40), figures):
            entries.append({"iteration": step, "test_top1": figure, "wall_time": step})
            trial.report(objective.value(entries, target, "iterations", 40), step)
            if trial.should_prune():
                stopped[name] = step
                study.tell(trial, state=study_lib.STATES.PRUNED)
                break
        else:
            study.tell(trial, objective.value(entries, target, "iterations", 40))
    assert stopped == {"tiny": 10, "diverging": 10}


def test_tune_refuses_bad_input_in_one_line(tmp_path, small_data):
    cases = [
        (["--space=" + STUDY_QUICK, f"--data_dir={small_data}", "--trials=2"],
         "--study_dir is required"),
        ([f"--space={tmp_path}/none.yaml", f"--data_dir={small_data}",
          f"--study_dir={tmp_path}/s", "--trials=2"], "cannot be read"),
        (["--space=" + STUDY_QUICK, f"--data_dir={small_data}", f"--study_dir={tmp_path}/s",
          "--trials=2", "--target=top9:0.8"], "the metric must be one of"),
        (["--space=" + STUDY_QUICK, f"--data_dir={small_data}", f"--study_dir={tmp_path}/s",
          "--trials=2", "--sampler=grid"], "has 48 points: give --trials=48"),
        (["--space=" + STUDY_QUICK, f"--data_dir={small_data}", f"--study_dir={tmp_path}/s",
          "--trials=2", "--batch_size=-3"], "--batch_size"),
        (["--space=" + STUDY_QUICK, f"--data_dir={small_data}", f"--study_dir={tmp_path}/s",
          "--trials=2", "--base_lr=0.1"], "sets --base_lr for every trial"),
        (["--space=" + STUDY_QUICK, f"--data_dir={small_data}", f"--study_dir={tmp_path}/s",
          "--trials=2", "--run_dir=x"], "give --study_dir"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            tune.main(["tune", *argv])
        assert message in str(info.value.code) and "\n" not in str(info.value.code), (
            argv, info.value.code)


def _tune(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "kerasbn.tune", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _study(study_dir, storage=None):
    url = storage or study_lib.default_storage(study_dir)
    return optuna.load_study(study_name="space", storage=url)


def _postgres():
    url = os.environ.get("KERASBN_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL server: set KERASBN_TEST_POSTGRES=postgresql://user:pass@"
                    "host/db (.ci/run starts one)")
    return url


def _trained_once(study_dir, trials):
    """Each trial's run dir trained once: one training start in its log, and its tests'
    iterations strictly increasing (no test repeated, as a second run over it would)."""
    for trial in trials:
        run = RunDir(os.path.join(study_dir, trial.user_attrs["run_dir"]))
        iterations = [e["iteration"] for e in run.read_metrics()]
        assert iterations == sorted(set(iterations)), (trial.number, iterations)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_two_tune_processes_share_one_study_and_run_no_trial_twice(
        tmp_path, small_data, storage):
    url = _postgres() if storage == "postgresql" else None
    study_dir, args = study_args(tmp_path, small_data,
                                 ["base_lr: {low: 0.005, high: 0.05, log: true}"], 10, 5,
                                 "--trials=4", *([f"--storage={url}"] if url else []))
    if url and "space" in [s.study_name for s in optuna.get_all_study_summaries(url)]:
        optuna.delete_study(study_name="space", storage=url)
    first = _tune(args)
    time.sleep(3)
    second = _tune(args)
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    study = _study(study_dir, url)
    done = study.get_trials(states=(study_lib.STATES.COMPLETE, study_lib.STATES.PRUNED))
    assert len(done) == 4 and len(study.get_trials()) == 4
    # Both processes took trials, and no trial number appears in both.
    taken = [{int(line.split()[1].rstrip(":")) for line in out.splitlines()
              if line.startswith("trial ") and "(trials/" in line} for out in outs]
    assert taken[0] and taken[1] and not taken[0] & taken[1], outs
    assert taken[0] | taken[1] == {0, 1, 2, 3}
    _trained_once(study_dir, done)
    assert sorted(os.listdir(os.path.join(study_dir, "trials"))) == ["000", "001", "002", "003"]


def _wait_for(condition, process=None, seconds=300):
    deadline = time.time() + seconds
    while not condition():
        assert (process is None or process.poll() is None) and time.time() < deadline
        time.sleep(0.2)


@pytest.mark.slow
def test_a_tune_stopped_then_killed_mid_trial_resumes_that_trial_and_loses_no_run(
        tmp_path, small_data):
    study_dir, args = study_args(tmp_path, small_data, ["base_lr: [0.02, 0.01]"], 100, 10,
                                 "--trials=2", "--sampler=grid", "--pruner=none",
                                 "--target=top1:0.99")
    first = RunDir(os.path.join(study_dir, "trials", "000"))
    # SIGTERM (a cluster's preemption, Ctrl-C): the trial checkpoints, tune queues it again.
    stopped = _tune(args)
    _wait_for(lambda: first.checkpoint_iteration() >= 10, stopped)
    stopped.send_signal(signal.SIGTERM)
    out = stopped.communicate(timeout=300)[0]
    assert stopped.returncode == 130 and out.strip().splitlines()[-1].startswith(
        "interrupted: every trial's run is kept"), out
    stopped_at = first.checkpoint_iteration()
    assert 10 <= stopped_at < 100 and not first.busy()
    # Rerun, then SIGKILL while the queued trial resumes: the kernel stops its training
    # process (a checkpoint), its heartbeat stops, and the next rerun retries it.
    killed = _tune(args)
    _wait_for(lambda: first.checkpoint_iteration() > stopped_at, killed)
    killed.kill()
    killed.wait()
    _wait_for(lambda: not first.busy(), seconds=120)
    killed_at = first.checkpoint_iteration()
    assert stopped_at < killed_at <= 100
    rerun = _tune(args)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out
    study = _study(study_dir)
    by_number = {t.number: t for t in study.get_trials()}
    chain = [t for t in study.get_trials() if t.params == {"base_lr": 0.02}]
    assert [t.state for t in chain] == [study_lib.STATES.FAIL] * (len(chain) - 1) + [
        study_lib.STATES.COMPLETE]
    assert all(t.user_attrs["run_dir"] == os.path.join("trials", "000") for t in chain)
    assert all(t.system_attrs["failed_trial"] == 0 for t in chain[1:])
    assert f"(resumes trials/000 at iteration {killed_at})" in out
    done = study.get_trials(states=(study_lib.STATES.COMPLETE,))
    assert len(done) == 2 and by_number[1].state == study_lib.STATES.COMPLETE
    # Resumed each time, not restarted: one test per iteration, the last at max_iter.
    _trained_once(study_dir, done)
    assert first.read_metrics()[-1]["iteration"] == 100
    assert sorted(os.listdir(os.path.join(study_dir, "trials"))) == ["000", "001"]
    table = open(os.path.join(study_dir, results.TABLE)).read()
    assert f"stopped, retried as {chain[1].number}" in table


@pytest.mark.slow
def test_trials_that_fall_behind_stop_at_the_first_rung_and_the_study_gives_its_results(
        tmp_path, small_data, capsys):
    # Grid order: the good rate first, then a tiny one and one that diverges.
    study_dir, args = study_args(tmp_path, small_data, ["base_lr: [0.05, 0.000001, 1000]"],
                                 30, 10, "--trials=3", "--sampler=grid", "--target=top1:0.99")
    tune.main(["tune", *args])
    out = capsys.readouterr().out
    study = _study(study_dir)
    good, tiny, diverging = study.trials
    assert good.state == study_lib.STATES.COMPLETE and good.user_attrs["iterations"] == 30
    for trial in (tiny, diverging):
        # Pruned at the first rung, the first test (training goes on while tune reads it:
        # the stop comes a poll later), or ended by its own divergence before it.
        assert trial.user_attrs["iterations"] < 30, out
        assert (trial.state == study_lib.STATES.PRUNED and max(trial.intermediate_values) == 10
                or trial.user_attrs.get("diverged") and trial.user_attrs["iterations"] < 10)
    assert tiny.state == study_lib.STATES.PRUNED
    run = os.path.join(study_dir, tiny.user_attrs["run_dir"])
    assert RunDir(run).read_summary()["pruned"]["iteration"] == 10
    report.main(["report", run, f"--out={tmp_path}/report"])
    assert "(pruned at 10)" in open(f"{tmp_path}/report/report.md").read()
    # The best configuration as a flagfile training reads as it is.
    best = train_flags.parse_flagfile(os.path.join(study_dir, results.BEST_FLAGS))
    assert best.base_lr == 0.05 and best.run_dir == os.path.join(study_dir, "best")
    assert best.data_dir == small_data and best.model == "bn"
    for name in results.PLOTS[:2] + ("intermediate",):
        assert open(os.path.join(study_dir, f"{name}.png"), "rb").read(4) == b"\x89PNG"
    assert "iterations trained: " in out and "against 90 for a grid of 3" in out


def test_a_study_refuses_to_continue_under_another_definition(tmp_path):
    url = study_lib.default_storage(str(tmp_path))
    made = study_lib.open_study(url, "s", {"space": "a", "target": "0.8"},
                                study_lib.sampler("tpe", 0), study_lib.pruner("none", 10, 40))
    again = study_lib.open_study(url, "s", {"space": "a", "target": "0.8"},
                                 study_lib.sampler("tpe", 1), study_lib.pruner("none", 10, 40))
    assert again._study_id == made._study_id
    with pytest.raises(study_lib.StudyError, match="was made with another target; rerun it"):
        study_lib.open_study(url, "s", {"space": "a", "target": "0.9"},
                             study_lib.sampler("tpe", 0), study_lib.pruner("none", 10, 40))


def test_a_grid_study_holds_every_point_once_in_order(tmp_path):
    loaded = space.load(STUDY_QUICK)
    url = study_lib.default_storage(str(tmp_path))
    grid = loaded.grid()
    study = study_lib.open_study(url, "g", {"space": loaded.digest},
                                 study_lib.sampler("grid", 0), study_lib.pruner("none", 10, 40),
                                 grid)
    drawn = [loaded.sample(study_lib.ask(study)) for _ in grid]
    assert drawn == grid


def test_a_trial_the_run_config_refuses_ends_the_study_in_one_line_and_stays_queued(
        tmp_path, small_data):
    space_file = write_space(tmp_path, ["widths: [\"16,16\"]"])
    study_dir = str(tmp_path / "study")
    with pytest.raises(SystemExit) as info:
        tune.main(["tune", f"--space={space_file}", f"--data_dir={small_data}",
                   f"--study_dir={study_dir}", "--trials=2"])
    message = str(info.value.code)
    assert message.startswith("error: trial 0 (widths=16,16) cannot train: ") and \
        "--widths" in message and "\n" not in message
    study = _study(study_dir)
    assert [t.state for t in study.trials] == [study_lib.STATES.FAIL, study_lib.STATES.WAITING]
    assert not os.path.exists(os.path.join(study_dir, "trials"))


def _finished(study, values, iterations):
    for value, spent in zip(values, iterations):
        study.add_trial(optuna.create_trial(
            value=value, user_attrs={"iterations": spent, "run_dir": f"trials/{spent}{value}"}))


def test_a_study_against_its_grid_counts_best_and_iterations_by_hand(tmp_path):
    definition = {"space": "a", "cap": 400}
    def made(name, definition=definition):
        (tmp_path / name).mkdir()
        return study_lib.open_study(study_lib.default_storage(str(tmp_path / name)), "s",
                                    definition, study_lib.sampler("tpe", 0),
                                    study_lib.pruner("none", 25, 400))
    grid, tuned = made("grid"), made("tuned")
    _finished(grid, [225, 300, 1.4 * 400, 1.2 * 400], [225, 300, 400, 400])
    _finished(tuned, [250, 1.5 * 400], [250, 75])
    line = results.versus_grid(tuned, grid, 25)
    assert line == ("against the grid (4 points): best 250 here, 225 there (+1.0 test "
                    "intervals); iterations trained 325 here, 1325 by the grid stopping at the "
                    "target, 1600 by the grid run to completion (0.20 of it)")
    other = made("other", {"space": "b", "cap": 400})
    with pytest.raises(study_lib.StudyError, match="another space"):
        results.versus_grid(other, grid, 25)


def test_the_field_space_loads_and_its_margin_exists_only_under_arcface():
    loaded = space.load(os.path.join(REPO, "launch", "tune", "field_quick.yaml"))
    grid = loaded.grid()
    # arcface at two margins, or cosface; three rates; two weight decays.
    assert len(grid) == (2 + 1) * 3 * 2
    assert all(("margin" in p) == (p["head"] == "arcface") for p in grid)


@pytest.mark.slow
def test_a_stopped_trial_whose_run_cannot_resume_is_retried_from_scratch(
        tmp_path, small_data):
    # The run length given on tune's command line overrides the base's, as for any flag.
    study_dir, args = study_args(tmp_path, small_data, ["base_lr: [0.02]"], 200, 10,
                                 "--trials=1", "--sampler=grid", "--pruner=none",
                                 "--target=top1:0.99", "--max_iter=100")
    first = RunDir(os.path.join(study_dir, "trials", "000"))
    stopped = _tune(args)
    _wait_for(lambda: first.checkpoint_iteration() >= 10, stopped)
    stopped.send_signal(signal.SIGTERM)
    stopped.communicate(timeout=300)
    with open(first.config_json, "w") as f:
        f.write("{not json")
    rerun = _tune(args)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out
    assert "trial 1 failed (error: " in out and "retried from scratch" in out
    states = [t.state for t in _study(study_dir).get_trials()]
    assert states == [study_lib.STATES.FAIL] * 2 + [study_lib.STATES.COMPLETE]
    assert _study(study_dir).trials[2].user_attrs["run_dir"] == os.path.join("trials", "002")
    # The run that could not resume is left as it was.
    assert open(first.config_json).read() == "{not json" and first.checkpoint_iteration()
