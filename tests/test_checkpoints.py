import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasbn.data import records
from kerasbn.runs import checkpoints
from kerasbn.runs.run_dir import RunDir


def _model(width=3):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(width)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _train(model, steps):
    x, y = np.ones((4, 2), np.float32), np.zeros((4, model.output_shape[-1]), np.float32)
    for _ in range(steps):
        model.train_on_batch(x, y)


def test_checkpoints_are_numbered_by_iteration_and_the_newest_kept(tmp_path):
    run = RunDir(str(tmp_path))
    model, wall_time, position = _model(), _variable(0.0), _variable(0)
    manager = checkpoints.make_manager(run, model, wall_time, position, keep=2)
    for iteration in (10, 20, 30):
        _train(model, 1)
        wall_time.assign(float(iteration))
        position.assign(iteration * 2)
        checkpoints.save(manager, iteration)
    assert [p.rsplit("-", 1)[1] for p in manager.checkpoints] == ["20", "30"]
    fresh = _model()
    assert checkpoints.restore_latest(run, fresh).endswith("ckpt-30")
    np.testing.assert_array_equal(fresh.get_weights()[0], model.get_weights()[0])
    again = _model()
    state = (_variable(0.0), _variable(-1))
    restored = checkpoints.restore(checkpoints.make_manager(run, again, *state, keep=2))
    assert restored.endswith("ckpt-30") and [v.numpy() for v in state] == [30.0, 60]
    assert int(again.optimizer.iterations.numpy()) == 3


def _variable(value):
    return tf.Variable(value, dtype=tf.float64 if isinstance(value, float) else tf.int64)


def test_a_checkpoint_from_before_data_positions_restores_the_rest(tmp_path):
    run = RunDir(str(tmp_path))
    model, wall_time = _model(), _variable(5.0)
    _train(model, 2)
    old = tf.train.Checkpoint(model=model, optimizer=model.optimizer, wall_time=wall_time)
    tf.train.CheckpointManager(old, run.checkpoints, 1).save(checkpoint_number=2)
    fresh, position = _model(), _variable(-1)
    checkpoints.restore(checkpoints.make_manager(run, fresh, _variable(0.0), position, 1))
    assert position.numpy() == -1 and int(fresh.optimizer.iterations.numpy()) == 2


def test_a_killed_writes_temporary_directory_is_removed(tmp_path):
    run = RunDir(str(tmp_path))
    os.makedirs(os.path.join(run.checkpoints, "ckpt-20_temp"))
    open(os.path.join(run.checkpoints, "ckpt-20_temp", "part-00000-of-00001.index"), "w").close()
    open(os.path.join(run.checkpoints, "checkpoint"), "w").close()
    checkpoints.remove_partial(run)
    assert os.listdir(run.checkpoints) == ["checkpoint"]


def test_weights_take_the_network_but_not_the_optimizer_state(tmp_path):
    run = RunDir(str(tmp_path))
    trained = _model()
    _train(trained, 3)
    checkpoints.save(checkpoints.make_manager(run, trained, _variable(0.0), _variable(0), 1), 3)
    fresh = _model()
    assert checkpoints.load_weights(fresh, str(tmp_path)).endswith("ckpt-3: every layer")
    np.testing.assert_array_equal(fresh.get_weights()[0], trained.get_weights()[0])
    assert int(fresh.optimizer.iterations.numpy()) == 0
    with pytest.raises(records.DataError, match="does not fit --model"):
        checkpoints.load_weights(_model(width=5), str(tmp_path))
    with pytest.raises(records.DataError, match="does not exist"):
        checkpoints.load_weights(_model(), str(tmp_path / "nowhere"))


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
    run = RunDir(str(tmp_path))
    model = _model(width=300)
    manager = checkpoints.make_manager(run, model, _variable(0.0), _variable(0), keep=3)
    weights = {}
    for iteration in (10, 20, 30):
        _train(model, 1)
        checkpoints.save(manager, iteration)
        weights[iteration] = model.get_weights()[0].copy()
    # A copy or a full disk cut the two newest short.
    for iteration in (20, 30):
        [data] = [p for p in os.listdir(run.checkpoints)
                  if p.startswith(f"ckpt-{iteration}.data")]
        path = os.path.join(run.checkpoints, data)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    fresh = _model(width=300)
    again = checkpoints.make_manager(run, fresh, _variable(0.0), _variable(0), keep=3)
    assert checkpoints.restore(again).endswith("ckpt-10")
    np.testing.assert_array_equal(fresh.get_weights()[0], weights[10])
    err = capsys.readouterr().err
    assert "checkpoint" in err and "ckpt-30 is damaged" in err and "ckpt-20 is damaged" in err
    assert "restored" in err and "ckpt-10, the newest intact checkpoint" in err
    other = _model(width=300)
    assert checkpoints.restore_latest(run, other).endswith("ckpt-10")
    np.testing.assert_array_equal(other.get_weights()[0], weights[10])
    [data] = [p for p in os.listdir(run.checkpoints) if p.startswith("ckpt-10.data")]
    os.remove(os.path.join(run.checkpoints, data))
    with pytest.raises(records.DataError, match="every checkpoint is damaged"):
        checkpoints.restore_latest(run, _model(width=300))
