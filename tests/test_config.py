import dataclasses
import json

import pytest

from kerasbn.config import ConfigError, RunConfig
from kerasbn.optim import schedules

BASE = dict(data_dir="d", run_dir="r", num_classes=6, image_size=(50, 50), channels=1)


def _config(**kw):
    return RunConfig(**{**BASE, **kw})


def test_json_round_trip_gives_the_same_value():
    config = _config(widths=["8", "8", "8", "8", "8", "8", "16"], target_accuracy=[0.7, 0.8],
                     schedule=schedules.ScheduleConfig(lr_policy="multistep",
                                                       stepvalue=[5, 9], max_iter=20),
                     test_interval=10)
    assert config.widths == (8, 8, 8, 8, 8, 8, 16) and config.max_iter == 20
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.schedule.stepvalue == (5, 9)


def test_a_config_from_an_older_version_takes_the_new_fields_defaults():
    values = _config().to_dict()
    del values["precise_bn"]
    values["schedule"].pop("warmup_iter")
    config = RunConfig.from_dict(values)
    assert config.precise_bn == 0 and config.schedule.warmup_iter == 0


def test_differences_name_run_defining_settings_only():
    config = _config()
    assert config.differences(dataclasses.replace(config, display=5, weights="w",
                                                  target_accuracy=(0.5,))) == []
    other = dataclasses.replace(config, schedule=schedules.ScheduleConfig(base_lr=0.5))
    assert config.differences(other) == [("base_lr", 0.5, 0.01)]
    assert [d[0] for d in config.differences(dataclasses.replace(config, num_classes=7))] == [
        "num_classes"]


@pytest.mark.parametrize("kw,message", [
    (dict(test_interval=10, schedule=schedules.ScheduleConfig(max_iter=5)), "--test_interval=10"),
    (dict(dropout=1.0), "--dropout"),
    (dict(target_accuracy=(1.5,)), "--target_accuracy"),
    (dict(widths=(8, 8)), "takes 7 values"),
    (dict(widths=("a",) * 7), "integers"),
    (dict(batch_size=0), "--batch_size"),
    (dict(snapshot=-1), "--snapshot"),
    (dict(norm="caffe"), "--norm=caffe"),
])
def test_invalid_settings_are_refused_naming_the_flag(kw, message):
    with pytest.raises(ConfigError, match=message):
        _config(**kw)


def test_network_settings_leave_adamw_decay_to_the_optimizer():
    assert _config(weight_decay=0.1).network().weight_decay == 0.1
    assert _config(weight_decay=0.1, solver_type="AdamW").network().weight_decay == 0.0


@pytest.mark.parametrize("kw,message", [
    (dict(bn_epsilon=-1e-3), "--bn_epsilon must not be negative"),
    (dict(bn_momentum=1.0), "--bn_momentum"),
    (dict(num_classes=1), "needs at least 2"),
])
def test_settings_that_would_train_on_nothing_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        _config(**kw)


@pytest.mark.parametrize("images, batch, num_epoch, warmup_epoch", [
    (5_179_510, 128 * 8, 20, 0),   # ms1mv3_r50: 5058 steps an epoch, 101,160 in all
    (17_091_657, 1024, 20, 0),     # glint360k_r100
    (1_000, 128, 3, 1),            # a partial last batch is no step
])
def test_epochs_become_iterations_as_arcface_torch_derives_them(images, batch, num_epoch,
                                                                warmup_epoch):
    """train_v2.py: total_step = num_image // total_batch_size * num_epoch, warmup_step the
    same with warmup_epoch; kerasbn's --batch_size is the global batch."""
    from kerasbn import config
    manifest = type("Manifest", (), {"splits": {"train": type("Split", (), {
        "count": images})()}})()
    got = config.epochs({"num_epoch": num_epoch, "warmup_epoch": warmup_epoch,
                         "batch_size": batch}, manifest)
    assert got == {"max_iter": images // batch * num_epoch,
                   "warmup_iter": images // batch * warmup_epoch}
    assert config.epochs({"num_epoch": 0, "batch_size": batch}, manifest) == {}
    with pytest.raises(ConfigError, match="--warmup_epoch=2 counts epochs of --num_epoch"):
        config.epochs({"warmup_epoch": 2, "batch_size": batch}, manifest)
    with pytest.raises(ConfigError, match="must be fewer than --num_epoch"):
        config.epochs({"num_epoch": 2, "warmup_epoch": 2, "batch_size": batch}, manifest)
    with pytest.raises(ConfigError, match="make no batch"):
        config.epochs({"num_epoch": 2, "batch_size": images + 1}, manifest)
