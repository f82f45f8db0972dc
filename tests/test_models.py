import keras
import numpy as np
import pytest

from kerasbn import models


def _counts(model):
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    bn_stats = sum(int(np.prod(v.shape)) for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)
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
    conv, bn, relu, pool = "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D"
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
    assert "BatchNormalization" not in names
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
