import os
import subprocess
import sys

import pytest
from absl import flags

from data_tools import bench_convert, build_records, inspect_records, synth
from kerasbn import (align, bench, caffe_import, compare_norms, enroll, evaluate, export,
                     launch, local_cluster, predict, report, show_schedule, torch_import,
                     tune)
from kerasbn.data.manifest import Manifest
from kerasbn.flags import cli, train_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(argv):
    return cli.parse(argv, train_flags.define)[0]


def test_a_repeatable_flag_on_the_command_line_replaces_the_flagfiles(tmp_path):
    base = tmp_path / "base.flags"
    base.write_text("--stepvalue=600\n--stepvalue=700\n--target_accuracy=0.8\n--max_iter=800\n")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"--flagfile={base}\n--jump_at=750\n")
    values = _parse(["train", f"--flagfile={outer}", "--stepvalue=400", "--max_iter=900"])
    assert values.stepvalue == [400]
    assert values.target_accuracy == [0.8] and values.jump_at == [750]
    assert values.max_iter == 900
    values = _parse(["train", "--flagfile", str(outer), "--target_accuracy=0.5",
                     "--target_accuracy=0.9"])
    assert values.target_accuracy == [0.5, 0.9] and values.stepvalue == [600, 700]
    assert _parse(["train", f"--flagfile={outer}"]).stepvalue == [600, 700]


def test_each_parse_starts_from_the_defaults():
    assert _parse(["train", "--max_iter=5"]).max_iter == 5
    assert _parse(["train"]).max_iter == 420000


def test_nested_flagfiles_resolve_beside_the_including_file_then_the_working_dir(
        tmp_path, monkeypatch):
    (tmp_path / "sets" / "a").mkdir(parents=True)
    (tmp_path / "base.flags").write_text("# a comment\n--max_iter=77\n// another\n")
    (tmp_path / "sets" / "a" / "run.flags").write_text("--flagfile=../../base.flags\n--seed=3\n")
    (tmp_path / "cwd.flags").write_text("--batch_size=5\n")
    (tmp_path / "sets" / "b.flags").write_text("--flagfile=cwd.flags\n")
    monkeypatch.chdir("/")
    values = _parse(["x", f"--flagfile={tmp_path / 'sets' / 'a' / 'run.flags'}"])
    assert (values.max_iter, values.seed) == (77, 3)
    monkeypatch.chdir(tmp_path)
    assert _parse(["x", "--flagfile=sets/b.flags"]).batch_size == 5


def test_bad_flags_and_missing_flagfiles_end_with_one_line(tmp_path):
    for argv, words in [(["x", "--nope=1"], "nope"), (["x", "--max_iter=abc"], "max_iter"),
                        (["x", f"--flagfile={tmp_path / 'missing.flags'}"], "missing.flags")]:
        with pytest.raises(SystemExit) as info:
            _parse(argv)
        message = str(info.value)
        assert message.startswith("error: ") and words in message and "\n" not in message
    (tmp_path / "loop.flags").write_text(f"--flagfile={tmp_path / 'loop.flags'}\n")
    with pytest.raises(SystemExit, match="includes itself"):
        _parse(["x", f"--flagfile={tmp_path / 'loop.flags'}"])


def test_two_commands_parse_their_own_flags_in_one_process():
    train_values = _parse(["train", "--seed=4"])
    report_values, runs = cli.parse(["report", "a", "--out=o"], report.define_flags)
    assert train_values.seed == 4 and runs == ["a"] and report_values.out == "o"
    assert "seed" not in report_values


def test_help_lists_the_commands_own_flags(capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse(["report", "--help"], report.define_flags, "Compares runs.")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Compares runs.") and "--reference" in out and "--max_iter" not in out


def _command(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, env=env)


@pytest.mark.slow
def test_commands_print_no_tensorflow_chatter_unless_asked(tmp_path):
    done = _command("kerasbn.train", f"--data_dir={tmp_path}", f"--run_dir={tmp_path / 'r'}")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'manifest.json'} not found: --data_dir must be a directory made "
        "by `python -m data_tools.synth` or `python -m data_tools.build_records`"]
    verbose = _command("kerasbn.train", "-v", "0", f"--data_dir={tmp_path}",
                       f"--run_dir={tmp_path / 'r'}")
    assert verbose.returncode == 1 and len(verbose.stderr.strip().splitlines()) > 1


# Every command's flags: what its main parses with cli.parse.
COMMANDS = {
    "kerasbn.train": train_flags.define,
    "kerasbn.align": align.define_flags,
    "kerasbn.compare_norms": compare_norms.define_flags,
    "kerasbn.local_cluster": local_cluster.define_flags,
    "kerasbn.show_schedule": show_schedule.define_flags,
    "kerasbn.export": export.define_flags,
    "kerasbn.evaluate": evaluate.define_flags,
    "kerasbn.predict": predict.define_flags,
    "kerasbn.report": report.define_flags,
    "kerasbn.launch": launch.define_flags,
    "kerasbn.bench": bench.define_flags,
    "kerasbn.caffe_import": caffe_import.define_flags,
    "kerasbn.torch_import": torch_import.define_flags,
    "kerasbn.enroll": enroll.define_flags,
    "kerasbn.tune": tune.define_flags,
    "data_tools.synth": synth.define_flags,
    "data_tools.build_records": build_records.define_flags,
    "data_tools.inspect_records": inspect_records.define_flags,
    "data_tools.bench_convert": bench_convert.define_flags,
}
# Numeric flags without bounds, on purpose: absl's own logging verbosity; Caffe's gamma and
# power, whose valid range depends on the policy (ScheduleConfig checks them).
UNBOUNDED = {"verbosity", "gamma", "power"}


def _bad_values(define):
    """(flag, argument) pairs that must each be refused: a wrong type, an out-of-range value,
    an empty value, derived from the flag registry alone."""
    values = flags.FlagValues()
    define(values)
    flags.DEFINE_integer("verbosity", -1, "", short_name="v", flag_values=values)
    for name in values:
        flag = values[name]
        if flag.name != name:
            continue  # a short name
        if isinstance(flag, flags.BooleanFlag):
            yield name, f"--{name}=maybe"
        elif isinstance(flag.parser, (flags.IntegerParser, flags.FloatParser)):
            yield name, f"--{name}=abc"
            yield name, f"--{name}="
            low, high = flag.parser.lower_bound, flag.parser.upper_bound
            assert low is not None or high is not None or name in UNBOUNDED, (
                f"{name}: declare lower_bound/upper_bound, or mark it unbounded")
            if low is not None:
                yield name, f"--{name}={low - 1}"
            if high is not None:
                yield name, f"--{name}={high + 1}"
        else:
            yield name, f"--{name}="
            if isinstance(flag.parser, flags.EnumParser):
                yield name, f"--{name}=bogus"


def test_every_command_with_flags_is_listed():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    defining = set()
    for top in ("kerasbn", "data_tools"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    if name.endswith(".py") and "\ndef define_flags(" in f.read():
                        defining.add(os.path.relpath(path, root)[:-3].replace(os.sep, "."))
    # The PyTorch peer bench imports torch, which only its own venv holds (bench --bench=peer).
    optional = {"kerasbn.flags.train_flags", "kerasbn.benchmarks.pytorch_peer"}
    assert defining - optional == set(COMMANDS) - {"kerasbn.train"}


CASES = [(command, name, arg) for command, define in COMMANDS.items()
         for name, arg in _bad_values(define)]


@pytest.mark.parametrize("command,name,arg", CASES, ids=[f"{c}:{a}" for c, _, a in CASES])
def test_every_flag_of_every_command_refuses_bad_values_with_one_line(command, name, arg):
    with pytest.raises(SystemExit) as info:
        cli.parse([command, arg], COMMANDS[command])
    message = str(info.value)
    assert message.startswith("error: ") and f"--{name}" in message, message
    assert "\n" not in message


MANIFEST = Manifest(image_size=(50, 50), channels=1, encoding="raw", class_names=("a", "b", "c"),
                    splits={}, mean=(0.0,), std=(1.0,))


@pytest.mark.parametrize("args,name", [
    (["--test_interval=10", "--max_iter=5"], "--test_interval"),
    (["--lr_policy=stepwise_then_jump", "--smooth_until=10", "--jump_at=5"], "--jump_at"),
    (["--dropout=1"], "--dropout"), (["--bn_momentum=1"], "--bn_momentum"),
    (["--momentum=1"], "--momentum"), (["--base_lr=0"], "--base_lr"), (["--gamma=-0.1"], "--gamma"),
    (["--delta=0"], "--delta"),
    (["--target_accuracy=0"], "--target_accuracy"), (["--widths=1,2"], "--widths"),
    (["--num_classes=4"], "--num_classes"), (["--stepvalue=9", "--stepvalue=3"], "--stepvalue"),
    (["--target=loss:0.5"], "--target"), (["--verify_interval=15"], "--verify_interval"),
])
def test_flags_whose_range_depends_on_others_are_refused_naming_them(args, name):
    values, _ = cli.parse(["train", "--data_dir=d", "--run_dir=r", *args], train_flags.define)
    with pytest.raises(ValueError, match=name):
        train_flags.to_config(values, MANIFEST)


def test_a_full_disk_is_one_line_naming_the_file():
    import errno

    import tensorflow as tf

    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/train-00000.tfrecord")
    assert cli.disk_full_line(full).startswith(
        "error: the disk is full (/data/out/train-00000.tfrecord); free space and rerun")
    saved = tf.errors.ResourceExhaustedError(
        None, None, "{{function_node SaveV2}} /run/checkpoints/ckpt-10_temp/part-0; No space "
        "left on device")
    assert "(/run/checkpoints/ckpt-10_temp/part-0; No space left on device)" in \
        cli.disk_full_line(saved)
    assert cli.disk_full_line(OSError(errno.EACCES, "Permission denied")) is None
    assert cli.disk_full_line(ValueError("a bug")) is None


@pytest.mark.slow
def test_a_command_that_fills_the_disk_ends_with_that_line(tmp_path):
    # A real full disk where this machine lets a test mount a small tmpfs (root); else the
    # line itself is tested above.
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        done = subprocess.run([sys.executable, "-m", "data_tools.synth", f"--out={full / 'd'}",
                               "--identities=20", "--images_per_identity=50"],
                              capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1].startswith("error: the disk is full (")
        assert "Traceback" not in done.stderr
        assert not os.path.exists(full / "d" / "manifest.json")
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)


def test_predict_refuses_an_out_without_embed():
    with pytest.raises(SystemExit, match="--out is the file --embed writes"):
        predict.main(["predict", "--model=m", "--out=x.npy", "a.jpg"])
