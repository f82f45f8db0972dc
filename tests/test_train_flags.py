import dataclasses

import pytest

from kerasbn import config
from kerasbn.data import records
from kerasbn.data.manifest import Manifest
from kerasbn.flags import cli, train_flags
from kerasbn.runs.run_dir import RunDir, run_settings, stored_config

MANIFEST = Manifest(image_size=(50, 50), channels=1, encoding="raw", class_names=("a", "b", "c"),
                    splits={}, mean=(0.0,), std=(1.0,))


def _values(*args):
    return cli.parse(["train", "--data_dir=d", "--run_dir=r", *args], train_flags.define)[0]


def test_the_config_takes_class_count_and_image_size_from_the_manifest():
    made = train_flags.to_config(_values("--lr_policy=step", "--stepsize=7", "--max_iter=50",
                                         "--test_interval=10"), MANIFEST)
    assert (made.num_classes, made.image_size, made.channels) == (3, (50, 50), 1)
    assert (made.schedule.lr_policy, made.schedule.stepsize, made.max_iter) == ("step", 7, 50)
    with pytest.raises(config.ConfigError, match="--num_classes=4 but d/manifest.json has 3"):
        train_flags.to_config(_values("--num_classes=4"), MANIFEST)
    with pytest.raises(config.ConfigError, match="--image_size=64"):
        train_flags.to_config(_values("--image_size=64"), MANIFEST)


def test_flags_txt_gives_back_the_same_config(tmp_path):
    values = _values("--stepvalue=100", "--stepvalue=200", "--widths=1,2,3,4,5,6,7",
                     "--nomirror", "--overwrite")
    text = train_flags.flagfile_text(values)
    assert "--overwrite" not in text and "--stepvalue=100\n--stepvalue=200" in text
    (tmp_path / "flags.txt").write_text(text)
    again = train_flags.parse_flagfile(str(tmp_path / "flags.txt"))
    assert train_flags.to_config(again, MANIFEST) == train_flags.to_config(values, MANIFEST)


def test_a_run_from_before_config_json_is_read_from_its_flags_txt(tmp_path, small_data):
    run = RunDir(str(tmp_path))
    (tmp_path / "flags.txt").write_text(f"--data_dir={small_data}\n--run_dir={tmp_path}\n"
                                        "--max_iter=60\n--test_interval=20\n--model=baseline\n")
    stored = stored_config(run.path)
    assert (stored.model, stored.max_iter, stored.num_classes) == ("baseline", 60, 6)
    assert run_settings(run.path)["model"] == "baseline"
    run.write_settings(dataclasses.replace(stored, model="bn"), "")
    assert stored_config(run.path).model == "bn"
    assert run_settings(run.path)["max_iter"] == 60
    with pytest.raises(records.DataError, match="config.json not found"):
        stored_config(str(tmp_path / "nothing"))


def test_a_flagfiles_verification_target_is_skipped_on_data_without_pairs_but_not_a_given_one():
    """The quickstart's flagfile sets --target=verify_acc:0.9; on a user's own photos (no
    holdout pairs) it once stopped training with "drop the target", which a flagfile's user
    cannot drop."""
    import dataclasses

    from kerasbn import train
    from kerasbn.data.manifest import Manifest, Split

    plain = Manifest(image_size=(50, 50), channels=1, encoding="raw", class_names=("a", "b"),
                     splits={}, mean=(0.0,), std=(1.0,))
    paired = dataclasses.replace(plain, pairs_file="pairs.txt", holdout_class_names=("c",),
                                 splits={"holdout": Split(("h.tfrecord",), 10)})
    targets = ["test_top1:0.8", "verify_acc:0.9"]
    argv = ["train", "--flagfile=launch/quickstart/baseline.flags", "--target", "verify_auc:0.9"]
    explicit = train.given_on_the_command_line(argv, "target")
    assert explicit == ["verify_auc:0.9"]
    assert train.unmeasurable_targets(targets, explicit, plain, "auto") == (
        ["test_top1:0.8"], ["verify_acc:0.9"])
    assert train.unmeasurable_targets(targets + explicit, explicit, plain, "auto") == (
        ["test_top1:0.8", "verify_auc:0.9"], ["verify_acc:0.9"])
    assert train.unmeasurable_targets(targets, explicit, paired, "auto") == (targets, [])
    assert train.unmeasurable_targets(targets, explicit, paired, "none")[1] == ["verify_acc:0.9"]
