"""The optimizer against hand computations of Caffe's update rules (docs/reference.md section 3)."""

import keras
import numpy as np
import pytest

from kerasbn.config import ConfigError, RunConfig
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


def _two_layers():
    """A backbone layer and a classifier named as kerasbn's heads name it ("logits")."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="body"),
                              keras.layers.Dense(1, name="logits")])
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


@pytest.mark.parametrize("solver, nesterov", [("SGD", False), ("Nesterov", True)])
def test_torch_sgd_and_backbone_clipping_update_as_pytorch_does(solver, nesterov):
    """--sgd=torch with --clip_grad_norm: arcface_torch's step (torch.optim.SGD after
    clip_grad_norm_ on the backbone alone), under a changing rate, where Caffe's buffer
    would part from it. Weight decay is the L2 term of the loss in both."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference here: pip install "
                                                "-e '.[torch]'")
    config = _config(solver_type=solver, sgd="torch", clip_grad_norm=0.5, weight_decay=0.0,
                     lr_policy="poly_warmup", warmup_iter=2, max_iter=6, power=1.0)
    model = _two_layers()
    theirs = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    with torch.no_grad():
        for layer, (kernel, bias) in zip(theirs, zip(*[iter(model.get_weights())] * 2)):
            layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
            layer.bias.copy_(torch.from_numpy(bias))
    model.compile(optimizers.make_optimizer(config), "mse")
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, nesterov=nesterov)
    rates = schedules.rates(schedules.make_schedule(config.schedule), range(5))
    for rate in rates:
        model.train_on_batch(X, Y)
        for group in optimizer.param_groups:
            group["lr"] = float(rate)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(theirs(torch.from_numpy(X)), torch.from_numpy(Y)).backward()
        norm = torch.nn.utils.clip_grad_norm_(theirs[0].parameters(), 0.5)
        assert float(norm) > 0.5  # the clip is at work
        optimizer.step()
    want = [p.detach().numpy() for p in theirs.parameters()]
    got = model.get_weights()
    for ours, them in zip(got, [want[0].T, want[1], want[2].T, want[3]]):
        np.testing.assert_allclose(ours, them, rtol=1e-5, atol=1e-6)


def test_backbone_clipping_leaves_the_classifier_and_spares_small_gradients():
    optimizer = optimizers.CaffeSGD(0.1, backbone_clipnorm=1.0)
    model = _two_layers()
    variables = model.trainable_variables
    optimizer.build(variables)
    assert [optimizers.is_head(v) for v in variables] == [False, False, True, True]
    optimizer._heads = [optimizers.is_head(v) for v in variables]
    big = [np.full(v.shape, 3.0, np.float32) for v in variables]
    clipped = [np.asarray(g) for g in optimizer._clip_gradients(big)]
    norm = np.sqrt(sum((g ** 2).sum() for g in clipped[:2]))
    assert norm == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(clipped[2], big[2])
    small = [g / 100 for g in big]
    for a, b in zip(optimizer._clip_gradients(small), small):
        np.testing.assert_allclose(np.asarray(a), b)


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_adam_takes_partial_fcs_rows_as_the_dense_gradient_partial_fc_v2_gives(kind):
    import tensorflow as tf
    config = _config(solver_type=kind, lr_policy="fixed", weight_decay=0.1)
    start = np.arange(15, dtype=np.float32).reshape(5, 3) / 10 + 1
    rows = tf.IndexedSlices(tf.constant(np.ones((2, 3), np.float32)), tf.constant([1, 3]),
                            tf.constant([5, 3]))
    sparse, dense = keras.Variable(start), keras.Variable(start)
    first, second = optimizers.make_optimizer(config), optimizers.make_optimizer(config)
    for _ in range(2):
        first.apply_gradients([(rows, sparse)])
        second.apply_gradients([(tf.convert_to_tensor(rows), dense)])
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), rtol=1e-6)
    assert np.all(sparse.numpy()[[1, 3]] < start[[1, 3]])
    # The undrawn rows: AdamW decays them (PartialFC_V2), Adam has nothing to move them by.
    undrawn = sparse.numpy()[[0, 2, 4]]
    assert np.all(undrawn < start[[0, 2, 4]]) if kind == "AdamW" else np.array_equal(
        undrawn, start[[0, 2, 4]])


def test_partial_fc_under_adam_needs_partial_fc_v2s_update():
    with pytest.raises(ConfigError, match="or add --sample_update=all"):
        _config(solver_type="AdamW", head="cosface", sample_classes=0.5)
