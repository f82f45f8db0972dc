"""The optimizer against hand computations of Caffe's update rules (docs/reference.md section 3)."""

import keras
import numpy as np

from kerasbn.config import RunConfig
from kerasbn.optim import optimizers, schedules

X = np.array([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.25], [2.0, 1.0]], np.float32)
Y = np.array([[1.0], [0.0], [-1.0], [2.0]], np.float32)
W0 = np.array([[0.3], [-0.2]], np.float32)
B0 = np.array([0.1], np.float32)


def _config(**kw):
    schedule = {"lr_policy": "step", "base_lr": 0.1, "gamma": 0.5, "stepsize": 2,
                "max_iter": 10}
    fields = schedules.ScheduleConfig.__annotations__
    schedule.update({k: kw.pop(k) for k in list(kw) if k in fields})
    solver = {"solver_type": "SGD", "momentum": 0.9, "weight_decay": 0.01, **kw}
    return RunConfig(data_dir="d", run_dir="r", num_classes=2, image_size=(1, 1), channels=1,
                     test_interval=1, schedule=schedules.ScheduleConfig(**schedule), **solver)


def _linear(weight_decay):
    regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    model = keras.Sequential([keras.Input((2,)),
                              keras.layers.Dense(1, kernel_regularizer=regularizer)])
    model.layers[0].set_weights([W0, B0])
    return model


def _grads(w, b):
    """Gradient of the mean squared error of the linear model, by hand."""
    residual = X @ w + b - Y
    return 2 * X.T @ residual / len(X), 2 * residual.mean(axis=0)


def _train(config, steps, coupled=True):
    model = _linear(config.weight_decay if coupled else 0.0)
    model.compile(optimizers.make_optimizer(config), "mse")
    for _ in range(steps * config.iter_size):
        model.train_on_batch(X, Y)
    return model


def test_sgd_matches_caffe_update_with_lr_steps():
    config = _config()
    model = _train(config, 5)
    w, b, vw, vb = W0.astype(np.float64), B0.astype(np.float64), 0.0, 0.0
    for it in range(5):
        lr = 0.1 * 0.5 ** (it // 2)
        gw, gb = _grads(w, b)
        vw = 0.9 * vw + lr * (gw + 0.01 * w)  # Caffe: decay is added to the gradient
        vb = 0.9 * vb + lr * gb               # biases not decayed
        w, b = w - vw, b - vb
    got_w, got_b = model.layers[0].get_weights()
    np.testing.assert_allclose(got_w, w, rtol=1e-5)
    np.testing.assert_allclose(got_b, b, rtol=1e-5)
    assert int(model.optimizer.iterations) == 5


def test_nesterov_matches_caffe():
    model = _train(_config(solver_type="Nesterov", weight_decay=0.0), 4)
    w, b, vw, vb = W0.astype(np.float64), B0.astype(np.float64), 0.0, 0.0
    for it in range(4):
        lr = 0.1 * 0.5 ** (it // 2)
        gw, gb = _grads(w, b)
        new_vw, new_vb = 0.9 * vw + lr * gw, 0.9 * vb + lr * gb
        w = w - (1.9 * new_vw - 0.9 * vw)
        b = b - (1.9 * new_vb - 0.9 * vb)
        vw, vb = new_vw, new_vb
    np.testing.assert_allclose(model.layers[0].get_weights()[0], w, rtol=1e-5)


def test_iter_size_accumulates_into_one_update():
    config = _config(iter_size=2, weight_decay=0.0, lr_policy="fixed")
    model = _train(config, 1)
    gw, _ = _grads(W0.astype(np.float64), B0.astype(np.float64))
    np.testing.assert_allclose(model.layers[0].get_weights()[0], W0 - 0.1 * gw, rtol=1e-5)
    assert int(model.optimizer.iterations) == 1


def test_adamw_decay_is_decoupled_and_spares_biases():
    config = _config(solver_type="AdamW", weight_decay=0.1, lr_policy="fixed", base_lr=0.01)
    model = _train(config, 1, coupled=False)
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    gw, gb = _grads(w, b)
    adam_step = lambda g: 0.01 * ((0.1 * g) / 0.1) / (np.sqrt((0.001 * g * g) / 0.001) + 1e-8)
    expected_w = w - 0.01 * 0.1 * w - adam_step(gw)
    expected_b = b - adam_step(gb)
    got_w, got_b = model.layers[0].get_weights()
    np.testing.assert_allclose(got_w, expected_w, rtol=1e-4)
    np.testing.assert_allclose(got_b, expected_b, rtol=1e-4)


def test_adam_uses_caffe_momentum_names():
    optimizer = optimizers.make_optimizer(_config(solver_type="Adam", momentum=0.8, momentum2=0.99,
                                              delta=1e-6))
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.8, 0.99, 1e-6)


def test_bias_lr_mult_scales_the_biases_whole_step_as_caffe():
    # Caffe with lr_mult 2 on the bias: v_b = m * v_b + lr * 2 * (g_b + wd * b).
    config = _config(bias_lr_mult=2.0, bias_decay_mult=1.0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(
        1, kernel_regularizer=keras.regularizers.L2(0.005),
        bias_regularizer=keras.regularizers.L2(0.005))])
    model.layers[0].set_weights([W0, B0])
    model.compile(optimizers.make_optimizer(config), "mse")
    for _ in range(5):
        model.train_on_batch(X, Y)
    w, b, vw, vb = W0.astype(np.float64), B0.astype(np.float64), 0.0, 0.0
    for it in range(5):
        lr = 0.1 * 0.5 ** (it // 2)
        gw, gb = _grads(w, b)
        vw = 0.9 * vw + lr * (gw + 0.01 * w)
        vb = 0.9 * vb + lr * 2 * (gb + 0.01 * b)
        w, b = w - vw, b - vb
    got_w, got_b = model.layers[0].get_weights()
    np.testing.assert_allclose(got_w, w, rtol=1e-5)
    np.testing.assert_allclose(got_b, b, rtol=1e-5)


def test_bias_lr_mult_is_refused_where_it_is_no_caffe_lr_mult():
    import pytest

    from kerasbn.config import ConfigError
    with pytest.raises(ConfigError, match="--bias_lr_mult=2 needs --solver_type=SGD"):
        _config(bias_lr_mult=2.0, solver_type="Adam")
