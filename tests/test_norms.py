"""Each BN semantics against a numpy transcription of docs/reference.md section 3 (Keras's against
its own source), and the fused Keras-semantics norm against Keras's own layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasbn.nn import models, norms

SHAPE = (4, 3, 3, 5)  # m = 36 values per channel


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(rng.uniform(-2, 2), rng.uniform(0.5, 3), SHAPE).astype(np.float32)
            for _ in range(n)]


def _moments(x):
    mu = x.mean(axis=(0, 1, 2), dtype=np.float64)
    v = ((x - mu) ** 2).mean(axis=(0, 1, 2))
    return mu, v, x.size // x.shape[-1]


def _y(x, gamma, beta, mean, var, eps):
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


class Keras:
    def __init__(self, b, eps, c):
        self.b, self.eps, self.mean, self.var = b, eps, np.zeros(c), np.ones(c)

    def train(self, x, g, be):
        mu, v, _ = _moments(x)
        self.mean = self.b * self.mean + (1 - self.b) * mu
        self.var = self.b * self.var + (1 - self.b) * v
        return _y(x, g, be, mu, v, self.eps)

    def infer(self, x, g, be):
        return _y(x, g, be, self.mean, self.var, self.eps)

    def stats(self):
        return [self.mean, self.var]


class BVLC:
    def __init__(self, b, eps, c):
        self.b, self.eps, self.s, self.mean, self.var = b, eps, 0.0, np.zeros(c), np.zeros(c)

    def train(self, x, g, be):
        mu, v, m = _moments(x)
        self.s = self.b * self.s + 1
        self.mean = mu + self.b * self.mean
        self.var = (m / (m - 1) if m > 1 else 1) * v + self.b * self.var
        return _y(x, g, be, mu, v, self.eps)

    def infer(self, x, g, be):
        k = 0 if self.s == 0 else 1 / self.s
        return _y(x, g, be, k * self.mean, k * self.var, self.eps)

    def stats(self):
        return [self.s, self.mean, self.var]


class Windows:
    def __init__(self, d, eps, c):
        self.d, self.eps, self.mean, self.var = d, eps, np.zeros(c), np.ones(c)

    def train(self, x, g, be):
        mu, v, _ = _moments(x)
        self.mean = (1 - self.d) * mu + self.d * self.mean
        self.var = (1 - self.d) * v + self.d * self.var
        return _y(x, g, be, mu, v, self.eps)

    def infer(self, x, g, be):
        return _y(x, g, be, self.mean, self.var, 0.0)

    def stats(self):
        return [self.mean, self.var]


class Nvidia:
    def __init__(self, b, eps, c):
        self.f, self.eps, self.mean, self.var = 1 - b, max(eps, 1e-5), np.zeros(c), np.zeros(c)

    def train(self, x, g, be):
        mu, v, m = _moments(x)
        self.mean = (1 - self.f) * self.mean + self.f * mu
        self.var = (1 - self.f) * self.var + self.f * v * m / (m - 1)
        return _y(x, g, be, mu, v, self.eps)

    def infer(self, x, g, be):
        return _y(x, g, be, self.mean, self.var, self.eps)

    def stats(self):
        return [self.mean, self.var]


class NvidiaCaffe:
    def __init__(self, b, eps, c):
        self.b, self.eps, self.it, self.mean, self.var = b, eps, 0, np.zeros(c), np.zeros(c)

    def train(self, x, g, be):
        mu, v, _ = _moments(x)
        self.it = min(self.it + 1, 201)
        if self.it > 200:
            v = np.minimum(v, 4 * (self.var + np.abs(self.var).mean()))
            v = np.maximum(v, self.var / 4)
        if self.it > 1:
            self.mean = (1 - self.b) * mu + self.b * self.mean
            self.var = (1 - self.b) * v + self.b * self.var
        else:
            self.mean, self.var = mu, v
        return _y(x, g, be, mu, v, self.eps)

    def infer(self, x, g, be):
        return _y(x, g, be, self.mean, self.var, self.eps)

    def stats(self):
        return [float(self.it), self.mean, self.var]


class Torch:
    """torch.nn.BatchNorm2d's forward (F.batch_norm): PyTorch's momentum is 1 - b."""

    def __init__(self, b, eps, c):
        self.b, self.eps, self.mean, self.var = b, eps, np.zeros(c), np.ones(c)

    def train(self, x, g, be):
        mu, v, m = _moments(x)
        self.mean = self.b * self.mean + (1 - self.b) * mu
        self.var = self.b * self.var + (1 - self.b) * v * m / (m - 1)
        return _y(x, g, be, mu, v, self.eps)

    def infer(self, x, g, be):
        return _y(x, g, be, self.mean, self.var, self.eps)

    def stats(self):
        return [self.mean, self.var]


REFERENCES = {"keras": Keras, "bvlc": BVLC, "windows": Windows, "nvidia": Nvidia,
              "nvidia_caffe": NvidiaCaffe, "torch": Torch}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_training_steps_statistics_and_inference_match_the_pseudo_code(name):
    momentum, epsilon = 0.9, 1e-3
    layer = norms.make_norm(name, momentum, epsilon)
    layer.build(SHAPE)
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(0, 1, 5)
    layer.gamma.assign(gamma.astype(np.float32))
    layer.beta.assign(beta.astype(np.float32))
    reference = REFERENCES[name](momentum, epsilon, 5)
    steps = 205 if name == "nvidia_caffe" else 6  # the CPU engine clips after 200 steps
    for x in _batches(steps):
        np.testing.assert_allclose(layer(x, training=True), reference.train(x, gamma, beta),
                                   rtol=1e-5, atol=1e-5)
        got = [v.numpy() for v in layer.non_trainable_variables]
        for g, want in zip(got, reference.stats()):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    x = _batches(1, seed=9)[0]
    np.testing.assert_allclose(layer(x, training=False), reference.infer(x, gamma, beta),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("epsilon", [1e-5, 1e-7])
@pytest.mark.parametrize("shape", [SHAPE, (36, 5)])
def test_torch_norm_computes_what_pytorchs_batchnorm_does(shape, epsilon):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference here: pip install "
                                                "-e '.[torch]'")
    layer = norms.make_norm("torch", epsilon=epsilon)
    layer.build(shape)
    theirs = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        shape[-1], eps=epsilon)
    rng = np.random.default_rng(3)
    gamma, beta = rng.uniform(0.5, 2, 5).astype(np.float32), rng.normal(0, 1, 5).astype(
        np.float32)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(gamma))
        theirs.bias.copy_(torch.from_numpy(beta))

    def nchw(x):
        return torch.from_numpy(np.moveaxis(x, -1, 1).copy() if x.ndim == 4 else x)

    for x in _batches(4, seed=5):
        x = x.reshape(shape)
        theirs.train()
        want = theirs(nchw(x)).detach().numpy()
        got = layer(x, training=True).numpy()
        np.testing.assert_allclose(np.moveaxis(got, -1, 1) if got.ndim == 4 else got, want,
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.moving_variance.numpy(),
                                   theirs.running_var.numpy(), rtol=1e-5)
    theirs.eval()
    x = _batches(1, seed=8)[0].reshape(shape)
    got = layer(x, training=False).numpy()
    np.testing.assert_allclose(np.moveaxis(got, -1, 1) if got.ndim == 4 else got,
                               theirs(nchw(x)).detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [SHAPE, (36, 5)])
@pytest.mark.parametrize("epsilon", [1e-3, 1e-7])
def test_keras_norm_computes_what_keras_batch_normalization_does(shape, epsilon):
    # 1e-7 is under cuDNN's least epsilon: the layer normalises unfused there.
    ours = norms.make_norm("keras", 0.9, epsilon)
    theirs = keras.layers.BatchNormalization(momentum=0.9, epsilon=epsilon)
    rng = np.random.default_rng(2)
    gamma, beta = rng.uniform(0.5, 2, 5).astype(np.float32), rng.normal(0, 1, 5)
    for layer in (ours, theirs):
        layer.build(shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta.astype(np.float32))
    for x in _batches(4):
        x = x.reshape(shape)
        np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.moving_mean, theirs.moving_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-6)
    x = _batches(1, seed=7)[0].reshape(shape)
    np.testing.assert_allclose(ours(x, training=False), theirs(x, training=False),
                               rtol=1e-5, atol=1e-5)


def test_a_frozen_keras_norm_infers_in_training_as_keras_does():
    layer = norms.make_norm("keras", 0.9)
    layer.build(SHAPE)
    layer.moving_mean.assign(np.full(5, 0.5, np.float32))
    layer.trainable = False
    x = _batches(1)[0]
    np.testing.assert_allclose(layer(x, training=True), layer(x, training=False))
    np.testing.assert_array_equal(layer.moving_mean, np.full(5, 0.5, np.float32))


def test_checkpoints_of_keras_batch_normalization_restore_into_the_keras_norm(tmp_path):
    # Runs saved before the keras norm was fused hold Keras's layer: they resume.
    old = keras.Sequential([keras.Input(SHAPE[1:]), keras.layers.BatchNormalization()])
    for x in _batches(3):
        old(x, training=True)
    prefix = tf.train.Checkpoint(model=old).write(str(tmp_path / "ckpt"))
    new = keras.Sequential([keras.Input(SHAPE[1:]), norms.make_norm("keras")])
    tf.train.Checkpoint(model=new).read(prefix).assert_consumed()
    x = _batches(1, seed=5)[0]
    np.testing.assert_allclose(new(x, training=False), old(x, training=False), rtol=1e-5,
                               atol=1e-6)


def test_nvidia_caffe_clipping_changes_the_variance_after_200_steps():
    layer = norms.make_norm("nvidia_caffe", 0.5)
    quiet = np.random.default_rng(0).normal(0, 0.1, SHAPE).astype(np.float32)
    for _ in range(201):
        layer(quiet, training=True)
    loud = quiet * 100
    out = layer(loud, training=True).numpy()
    assert np.abs(out).max() > 3  # normalised with a clipped (smaller) variance


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_gradients_match_finite_differences(name):
    layer = norms.make_norm(name, 0.9, 1e-3)
    x = tf.constant(_batches(1, seed=3)[0])
    weights = tf.constant(np.random.default_rng(4).normal(size=SHAPE).astype(np.float32))
    layer.build(SHAPE)
    state = [v.numpy() for v in layer.non_trainable_variables]

    def loss(inp):
        for v, s in zip(layer.non_trainable_variables, state):
            v.assign(s)
        return tf.reduce_sum(layer(inp, training=True) * weights)

    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(x)
    grad = tape.gradient(value, x).numpy()
    h = 1e-2
    for index in [(0, 0, 0, 0), (1, 2, 1, 3), (3, 1, 2, 4)]:
        delta = np.zeros(SHAPE, np.float32)
        delta[index] = h
        numeric = (loss(x + delta) - loss(x - delta)).numpy() / (2 * h)
        assert grad[index] == pytest.approx(numeric, rel=2e-2, abs=2e-3)


@pytest.mark.parametrize("name", norms.NORMS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_keep_float32_statistics(name, dtype):
    keras.mixed_precision.set_global_policy(f"mixed_{dtype}")
    try:
        layer = norms.make_norm(name, 0.9)
        x = tf.cast(_batches(1)[0], dtype)
        out = layer(x, training=True)
        assert out.dtype == dtype
        assert all(v.dtype == "float32" for v in layer.weights)
        if name not in ("none", "renorm"):
            per_channel = tf.cast(out, tf.float32).numpy().reshape(-1, 5)
            np.testing.assert_allclose(per_channel.mean(axis=0), 0, atol=0.05)
        assert np.isfinite(tf.cast(layer(x, training=False), tf.float32).numpy()).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", norms.NORMS)
def test_save_and_load_round_trip(name, tmp_path):
    model = keras.Sequential([keras.Input(SHAPE[1:]), norms.make_norm(name, 0.8, 1e-4)])
    for x in _batches(3):
        model(x, training=True)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = _batches(1, seed=5)[0]
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-6)
    if name != "none":
        assert loaded.layers[0].get_config()["momentum"] == pytest.approx(0.8)


def test_implementation_defaults_and_unknown_name():
    assert norms.make_norm("bvlc").momentum == 0.999
    assert norms.make_norm("windows").epsilon == 1e-10
    with pytest.raises(ValueError, match="--norm"):
        norms.make_norm("batchrenorm")


@pytest.mark.parametrize("norm", norms.NORMS)
@pytest.mark.parametrize("network,shape,classes", [
    ("bn", (50, 50, 1), 20), ("cifar10_quick", (32, 32, 3), 10),
    ("cifar10_full_sigmoid_bn", (32, 32, 3), 10)])
def test_networks_build_with_every_norm(norm, network, shape, classes):
    model = models.build(network, classes, image_size=shape[:2], channels=shape[2], norm=norm)
    out = model(np.zeros((2, *shape), np.float32), training=True)
    assert out.shape == (2, classes)


def test_cifar10_quick_has_caffes_parameter_count():
    model = models.build("cifar10_quick", 10, image_size=(32, 32), channels=3, norm="none")
    assert model.count_params() == 145_578
    shapes = [model.get_layer(n).output.shape[1:3] for n in ("pool1", "pool2", "pool3")]
    assert shapes == [(16, 16), (8, 8), (4, 4)]


@pytest.mark.parametrize("name, max_iter, want", [
    ("nvidia", 240, 0.9),                      # window 1000 -> max(10, round(0.57)) = 10
    ("keras", 240, 0.9), ("windows", 240, 0.9), ("sync", 240, 0.9), ("renorm", 240, 0.9),
    ("nvidia", 100_000, 1 - 1 / 238),          # round(1000 * 100000 / 420000) = 238
    ("keras", 100_000, 1 - 1 / 24),            # round(100 * 0.238) = 24
    ("windows", 100_000, 0.9),                 # round(20 * 0.238) = 5 -> 10, shorter than 20
    ("nvidia", 420_000, 0.999), ("keras", 1_000_000, 0.99),
    ("bvlc", 240, 0.999), ("nvidia_caffe", 240, 0.999),  # no zero-start bias to scale away
])
def test_the_averaging_window_scales_with_a_short_run_as_the_schedule_does(name, max_iter,
                                                                            want):
    assert norms.scaled_momentum(name, max_iter) == pytest.approx(want)
