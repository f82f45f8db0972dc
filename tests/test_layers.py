"""Every custom Keras layer of kerasbn as Keras's own `run_layer_test` checks a layer: it
builds on a symbolic input of the shape it is given, its output has the shape it declares,
`get_config` rebuilds an equal layer (the same config, the same outputs with the same
weights), and a model holding it survives a .keras save and load. The table must name every
registered layer, so a new one cannot land untested."""

import inspect

import keras
import numpy as np
import pytest

from kerasbn.nn import caffe_layers, grouped_conv, norms, prelu, transformer
from kerasbn.nn.heads import cosine
from kerasbn.nn.sharded import training

IMAGES = (2, 6, 6, 4)
TOKENS = (2, 6, 8)


def _tokens_and_order(seed):
    """Tokens and a per-sample order of them, as TokenMasking hands TokenRestoring."""
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(TOKENS[1]) for _ in range(TOKENS[0])]).astype(np.int32)
    return [rng.normal(size=TOKENS).astype(np.float32), order]


CASES = {
    "KerasBatchNorm": (lambda: norms.make_norm("keras", name_prefix="n"), IMAGES),
    "BVLCBatchNorm": (lambda: norms.make_norm("bvlc", name_prefix="n"), IMAGES),
    "WindowsBatchNorm": (lambda: norms.make_norm("windows", name_prefix="n"), IMAGES),
    "NvidiaBatchNorm": (lambda: norms.make_norm("nvidia", name_prefix="n"), IMAGES),
    "NvidiaCaffeBatchNorm": (lambda: norms.make_norm("nvidia_caffe", name_prefix="n"), IMAGES),
    "TorchBatchNorm": (lambda: norms.make_norm("torch", name_prefix="n"), IMAGES),
    "PReLU": (lambda: prelu.PReLU(keras.initializers.Constant(0.25), shared_axes=[1, 2]),
              IMAGES),
    "GroupedConv2D": (lambda: grouped_conv.conv2d(8, 3, 1, 2, use_bias=False), IMAGES),
    "CosineClassifier": (lambda: cosine.CosineClassifier(5, 30.0), (2, 4)),
    "ShardedClassifier": (lambda: training.ShardedClassifier(5, 30.0, seed=1), (2, 4)),
    "CaffePooling": (lambda: caffe_layers.CaffePooling("MAX", (3, 3), (2, 2)), IMAGES),
    "LRN": (lambda: caffe_layers.LRN(3, 1e-4, 0.75, 1.0), IMAGES),
    "Normalize": (lambda: caffe_layers.Normalize(across_spatial=False), IMAGES),
    "Scale": (lambda: caffe_layers.Scale(bias_term=True), IMAGES),
    "Power": (lambda: caffe_layers.Power(2.0, 0.5, 1.0), IMAGES),
    "SliceAxis": (lambda: caffe_layers.SliceAxis(-1, 1, 3), IMAGES),
    "CaffeReshape": (lambda: caffe_layers.CaffeReshape([4, 36]), IMAGES),
    "ChannelsFirstFlatten": (lambda: caffe_layers.ChannelsFirstFlatten(), IMAGES),
    "CaffeInput": (lambda: caffe_layers.CaffeInput(True, (1.0, 2.0, 3.0), 0.5), (2, 6, 6, 3)),
    "Eltwise": (lambda: caffe_layers.Eltwise("SUM", [1.0, -2.0]), [IMAGES, IMAGES]),
    "VectorNormalize": (lambda: caffe_layers.VectorNormalize("L2"), (2, 8)),
    "Flip": (lambda: caffe_layers.Flip(width=True, height=True), IMAGES),
    "Axpy": (lambda: caffe_layers.Axpy(), [(2, 1, 1, 4), IMAGES, IMAGES]),
    "CaffePermute": (lambda: caffe_layers.CaffePermute([0, 2, 3, 1]), IMAGES),
    "CaffeOutput": (lambda: caffe_layers.CaffeOutput("conv4-2"), IMAGES),
    "PositionEmbedding": (lambda: transformer.PositionEmbedding(), TOKENS),
    "TokenMasking": (lambda: transformer.TokenMasking(0.25), TOKENS),
    "TokenRestoring": (lambda: transformer.TokenRestoring(), _tokens_and_order),
    "SelfAttention": (lambda: transformer.SelfAttention(2), TOKENS),
    "DropPath": (lambda: transformer.DropPath(0.5), TOKENS),
}


def _inputs(shape, seed=0):
    if callable(shape):
        return shape(seed)
    rng = np.random.default_rng(seed)
    if isinstance(shape, list):
        return [rng.normal(size=s).astype(np.float32) for s in shape]
    return rng.normal(size=shape).astype(np.float32)


def _symbolic(shape):
    if callable(shape):
        return [keras.Input(a.shape[1:], dtype=str(a.dtype)) for a in shape(0)]
    if isinstance(shape, list):
        return [keras.Input(s[1:]) for s in shape]
    return keras.Input(shape[1:])


def test_every_registered_layer_is_in_the_table():
    layers = {name.split(">")[1] for name, cls in keras.saving.get_custom_objects().items()
              if name.startswith("kerasbn") and inspect.isclass(cls)
              and issubclass(cls, keras.layers.Layer) and not issubclass(cls, keras.Model)}
    assert layers - {"CaffeNorm"} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_layer_builds_declares_its_shape_and_round_trips(name, tmp_path):
    make, shape = CASES[name]
    layer = make()
    assert type(layer).__name__ == name
    symbolic = _arrays(layer(_symbolic(shape)))
    x = _inputs(shape)
    y = _arrays(layer(x))
    assert all(np.all(np.isfinite(part)) for part in y)
    assert [tuple(s.shape[1:]) for s in symbolic] == [part.shape[1:] for part in y]
    again = type(layer).from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    again(_inputs(shape, 1))
    again.set_weights(layer.get_weights())
    for got, expected in zip(_arrays(again(x)), y):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    inputs = _symbolic(shape)
    model = keras.Model(inputs, make()(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for got, expected in zip(_arrays(loaded(x)), _arrays(model(x))):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def _arrays(outputs):
    """A layer's output (or outputs) as a list of tensors or arrays."""
    if isinstance(outputs, (tuple, list)):
        return [o if isinstance(o, keras.KerasTensor) else np.asarray(o) for o in outputs]
    return [outputs if isinstance(outputs, keras.KerasTensor) else np.asarray(outputs)]
