import keras
import numpy as np
import pytest

from kerasbn.nn import norms
from kerasbn.nn import precise_bn
from test_norms import SHAPE, _batches, _moments, _y


@pytest.mark.parametrize("name", ["keras", "bvlc", "windows", "nvidia", "nvidia_caffe"])
def test_precise_bn_sets_running_statistics_to_the_batch_average(name):
    model = keras.Sequential([keras.Input(SHAPE[1:]), norms.make_norm(name, 0.99, 1e-3)])
    batches = [(x, None) for x in _batches(4, seed=7)]
    for x, _ in batches:
        model(x, training=True)  # stale, lagging statistics
    assert precise_bn.recompute(model, iter(batches), 4) == 1
    moments = [_moments(x)[:2] for x, _ in batches]
    mean = np.mean([m for m, _ in moments], axis=0)
    variance = np.mean([v for _, v in moments], axis=0)
    x = _batches(1, seed=8)[0]
    expected = _y(x, 1.0, 0.0, mean, variance, 0.0 if name == "windows" else 1e-3)
    np.testing.assert_allclose(model(x, training=False), expected, rtol=1e-4, atol=1e-4)
