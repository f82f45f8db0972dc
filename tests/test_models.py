import keras
import numpy as np
import pytest

from kerasbn.nn import models, norms


def _counts(model):
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    bn_stats = sum(int(np.prod(v.shape)) for layer in model.layers
                   if isinstance(layer, norms.KerasBatchNorm)
                   for v in layer.non_trainable_variables)
    return trainable, bn_stats


@pytest.mark.parametrize("name,trainable,bn_stats", [
    ("baseline", 5_862_828, 0), ("bn", 5_826_316, 832), ("bn_all", 5_826_892, 1_984)])
def test_parameter_counts_match_the_reference(name, trainable, bn_stats):
    assert _counts(models.build(name, 14_700)) == (trainable, bn_stats)


def _sequence(model):
    return [type(layer).__name__ for layer in model.layers[1:]]


def test_bn_network_layer_sequence():
    model = models.build("bn", 10)
    conv, bn, relu, pool = "Conv2D", "KerasBatchNorm", "ReLU", "MaxPooling2D"
    assert _sequence(model) == [
        conv, bn, relu, conv, relu, pool,
        conv, bn, relu, pool,
        conv, bn, relu, conv, relu, pool,
        conv, bn, relu, conv, relu, "GlobalAveragePooling2D", "Dense"]
    assert [l.filters for l in model.layers if isinstance(l, keras.layers.Conv2D)] == [
        32, 64, 128, 96, 192, 160, 320]
    assert [l.use_bias for l in model.layers if isinstance(l, keras.layers.Conv2D)] == [
        False, True, False, False, True, False, True]


def test_baseline_has_dropout_and_no_bn():
    model = models.build("baseline", 10)
    names = _sequence(model)
    assert "KerasBatchNorm" not in names
    assert names[-2:] == ["Dropout", "Dense"]
    assert model.get_layer("dropout").rate == 0.4


def test_feature_maps_round_up_like_caffe():
    model = models.build("bn", 10)
    shapes = [model.get_layer(f"pool{i}").output.shape[1:3] for i in (1, 2, 3)]
    assert shapes == [(25, 25), (13, 13), (7, 7)]
    assert model.get_layer("embedding").output.shape == (None, 320)


def test_other_input_sizes_widths_and_channels_work():
    model = models.build("bn", 7, image_size=(32, 32), channels=3,
                         widths=[8, 8, 8, 8, 8, 8, 16], dropout=0.2)
    out = model(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 7)
    assert model.get_layer("embedding").output.shape == (None, 16)


def test_logits_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.build("bn", 5)
        assert model.get_layer("conv1_1").compute_dtype == "bfloat16"
        assert model(np.zeros((1, 50, 50, 1), np.float32)).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_weight_decay_is_caffe_meaning():
    model = models.build("baseline", 3, weight_decay=5e-4)
    assert model.get_layer("conv1_1").kernel_regularizer.l2 == pytest.approx(2.5e-4)
    assert model.get_layer("conv1_1").bias_regularizer is None


def test_unknown_network_is_named():
    with pytest.raises(ValueError, match="--model"):
        models.build("resnet", 10)


def _kernel(name, **kw):
    keras.utils.set_random_seed(0)
    return models.build("bn", 10, **kw).get_layer(name).kernel.numpy()


def test_caffe_fillers_have_caffes_distributions():
    fan_in = 3 * 3 * 160  # conv4_2: 160 -> 320 channels, 3x3
    xavier = _kernel("conv4_2", weight_filler="xavier")
    limit = np.sqrt(3 / fan_in)
    assert np.abs(xavier).max() <= limit and np.abs(xavier).max() > 0.99 * limit
    assert xavier.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)
    msra = _kernel("conv4_2", weight_filler="msra")
    std = np.sqrt(2 / fan_in)
    assert msra.std() == pytest.approx(std, rel=0.02)
    # Untruncated: about 4.6% of a Gaussian lies beyond 2 std; Keras's he_normal cuts it off.
    assert np.mean(np.abs(msra) > 2 * std) == pytest.approx(0.0455, abs=0.005)
    he = _kernel("conv4_2")
    assert np.mean(np.abs(he) > 2 * he.std() * 1.15) < 0.001
    gaussian = _kernel("conv4_2", weight_filler="gaussian", filler_std=0.003)
    assert gaussian.std() == pytest.approx(0.003, rel=0.02) and abs(gaussian.mean()) < 1e-4


def test_cifar10_full_sigmoid_bn_is_the_pinned_prototxt():
    # ad248bd3: conv1 32 5x5 no bias (3 -> 32), conv2 32 (32 -> 32), conv3 64 (32 -> 64), each
    # BN with a learned scale and shift; ip1 10 outputs on 64 x 4 x 4 with a bias.
    prototxt = (5 * 5 * 3 * 32 + 5 * 5 * 32 * 32 + 5 * 5 * 32 * 64 + (64 * 4 * 4 * 10 + 10)
                + 2 * (32 + 32 + 64))
    keras.utils.set_random_seed(0)
    model = models.build("cifar10_full_sigmoid_bn", 10, image_size=(32, 32), channels=3)
    assert _counts(model)[0] == prototxt == 89706
    for layer, std in (("conv1", 1e-4), ("conv2", 0.01), ("conv3", 0.01), ("logits", 0.01)):
        kernel = model.get_layer(layer).kernel.numpy()
        assert kernel.std() == pytest.approx(std, rel=0.1), layer
        assert np.abs(kernel).max() > 3 * std, layer  # Caffe's Gaussian is untruncated
    assert not model.get_layer("logits").bias.numpy().any()
    assert [layer.name for layer in model.layers if "pool" in layer.name] == [
        "pool1", "pool2", "pool3"]
    assert model.get_layer("pool1").output.shape[1:3] == (16, 16)
    assert model.get_layer("pool3").output.shape[1:3] == (4, 4)


def test_decay_multipliers_reach_biases_and_bn_scale_and_shift():
    keras.utils.set_random_seed(0)
    model = models.build("bn", 10, norm="nvidia", weight_decay=0.002, bias_decay_mult=0.5,
                         bn_decay_mult=1.0, widths=[8, 8, 8, 8, 8, 8, 16])
    squares = lambda kind: sum(float(np.sum(np.square(v.numpy())))
                               for v in model.trainable_variables if v.name in kind)
    want = 0.001 * (squares({"kernel"}) + 0.5 * squares({"bias"})
                    + squares({"gamma", "beta"}))
    assert float(sum(model.losses)) == pytest.approx(want, rel=1e-5)
    plain = models.build("bn", 10, norm="nvidia", weight_decay=0.002,
                         widths=[8, 8, 8, 8, 8, 8, 16])
    assert len(plain.losses) == sum(1 for v in plain.trainable_variables if v.name == "kernel")
