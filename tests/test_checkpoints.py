import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasbn import checkpoints, records
from kerasbn.run_dir import RunDir


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
    model, wall_time = _model(), tf.Variable(0.0, dtype=tf.float64)
    manager = checkpoints.make_manager(run, model, model.optimizer, wall_time, keep=2)
    for iteration in (10, 20, 30):
        _train(model, 1)
        wall_time.assign(float(iteration))
        manager.save(checkpoint_number=iteration)
    assert [p.rsplit("-", 1)[1] for p in manager.checkpoints] == ["20", "30"]
    fresh = _model()
    assert checkpoints.restore_latest(run, fresh).endswith("ckpt-30")
    np.testing.assert_array_equal(fresh.get_weights()[0], model.get_weights()[0])


def test_weights_take_the_network_but_not_the_optimizer_state(tmp_path):
    run = RunDir(str(tmp_path))
    trained, wall_time = _model(), tf.Variable(0.0, dtype=tf.float64)
    _train(trained, 3)
    checkpoints.make_manager(run, trained, trained.optimizer, wall_time, 1).save(3)
    fresh = _model()
    assert checkpoints.load_weights(fresh, str(tmp_path)).endswith("ckpt-3")
    np.testing.assert_array_equal(fresh.get_weights()[0], trained.get_weights()[0])
    assert int(fresh.optimizer.iterations.numpy()) == 0
    with pytest.raises(records.DataError, match="does not fit --model"):
        checkpoints.load_weights(_model(width=5), str(tmp_path))
    with pytest.raises(records.DataError, match="does not exist"):
        checkpoints.load_weights(_model(), str(tmp_path / "nowhere"))
