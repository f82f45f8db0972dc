"""Importing Caffe networks: every supported layer against OpenCV's dnn module (an independent
implementation of Caffe's layers), both network formats, the command's export and its
one-line refusals."""

import json
import os
import re

import numpy as np
import pytest

from kerasbn import caffe_import
from kerasbn.benchmarks import caffe_speed
from kerasbn.caffe import importer, network, proto

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip("OpenCV without Caffe import (5.x removed it; pip install "
                "'opencv-python-headless<5')", allow_module_level=True)


def ours(prototxt, caffemodel, x):
    built = network.build(network.plan(proto.read_prototxt(prototxt)),
                          network.weights_of(proto.read_caffemodel(caffemodel)))
    out = built.model(x.transpose(0, 2, 3, 1)).numpy()
    return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out


def opencv(prototxt, caffemodel, x):
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    net.setInput(x)
    return net.forward()


def assert_close(mine, reference):
    assert mine.shape == reference.shape
    worst = np.abs(mine - reference).max() / np.abs(reference).max()
    assert worst < 1e-4, worst
    return worst


RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


HEADER = 'name: "{name}"\ninput: "data"\ninput_dim: 2 input_dim: {c} input_dim: {h} ' \
         'input_dim: {w}\n'


def layer(name, kind, bottom, top=None, params=""):
    bottoms = "".join(f' bottom: "{b}"' for b in ([bottom] if isinstance(bottom, str)
                                                    else bottom))
    tops = "".join(f' top: "{t}"' for t in ([top or name] if isinstance(top or name, str)
                                             else top))
    return f'layer {{ name: "{name}" type: "{kind}"{bottoms}{tops} {params} }}\n'


CONVOLUTIONS = HEADER.format(name="convolutions", c=3, h=17, w=15) + "".join([
    # Per-axis kernel, stride and padding, no bias.
    layer("conv1", "Convolution", "data", params="convolution_param { num_output: 8 "
          "kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 2 bias_term: false }"),
    layer("prelu1", "PReLU", "conv1"),
    # Groups and dilation.
    layer("conv2", "Convolution", "prelu1", params="convolution_param { num_output: 6 "
          "kernel_size: 3 group: 2 dilation: 2 pad: 2 }"),
    # BVLC's BatchNorm and the Scale after it, in place; a leaky ReLU in place.
    layer("bn2", "BatchNorm", "conv2", "conv2", "batch_norm_param { eps: 0.001 }"),
    layer("scale2", "Scale", "conv2", "conv2", "scale_param { bias_term: true }"),
    layer("relu2", "ReLU", "conv2", "conv2", "relu_param { negative_slope: 0.1 }"),
    # Caffe's rounding up: 9x15 -> 4x7 (5x8 from 9x15 would need the last window in padding).
    layer("pool1", "Pooling", "conv2", params="pooling_param { pool: MAX kernel_size: 3 "
          "stride: 2 }"),
    layer("pool2", "Pooling", "pool1", params="pooling_param { pool: AVE kernel_size: 3 "
          "stride: 2 pad: 1 }"),
    layer("deconv", "Deconvolution", "pool2", params="convolution_param { num_output: 5 "
          "kernel_size: 3 stride: 2 pad: 1 }"),
    layer("flat", "Flatten", "deconv"),
    layer("fc", "InnerProduct", "flat", params="inner_product_param { num_output: 7 }"),
])


def _convolution_weights():
    bn_var = RNG.uniform(0.5, 2, 6).astype(np.float32)
    return {"conv1": [_normal(8, 3, 3, 5)], "prelu1": [RNG.uniform(0, 0.5, 8)],
            "conv2": [_normal(6, 4, 3, 3), _normal(6)],
            "bn2": [_normal(6) * 4, bn_var * 8, np.array([4.0])],
            "scale2": [_normal(6), _normal(6)], "deconv": [_normal(6, 5, 3, 3), _normal(5)],
            "fc": [_normal(7, 5 * 5 * 7), _normal(7)]}


def test_convolutions_batchnorm_pooling_and_the_flatten_order_equal_opencv(tmp_path):
    files = proto.write_net(tmp_path, "convolutions", CONVOLUTIONS, _convolution_weights())
    x = _normal(2, 3, 17, 15)
    assert_close(ours(*files, x), opencv(*files, x))


ELEMENTWISE = HEADER.format(name="elementwise", c=4, h=6, w=5) + "".join([
    layer("conv", "Convolution", "data", params="convolution_param { num_output: 6 "
          "kernel_size: 1 }"),
    layer("split", "Split", "conv", ["a", "b", "c"]),
    layer("tanh", "TanH", "a"),
    layer("elu", "ELU", "b", params="elu_param { alpha: 0.5 }"),
    layer("sigmoid", "Sigmoid", "c"),
    layer("power", "Power", "sigmoid", params="power_param { power: 2 scale: 0.5 shift: 1 }"),
    layer("sum", "Eltwise", ["tanh", "elu"], params="eltwise_param { operation: SUM "
          "coeff: 0.5 coeff: -2 }"),
    layer("prod", "Eltwise", ["sum", "power"], params="eltwise_param { operation: PROD }"),
    layer("max", "Eltwise", ["prod", "tanh"], params="eltwise_param { operation: MAX }"),
    layer("cat", "Concat", ["max", "elu"]),
    layer("slice", "Slice", "cat", ["s1", "s2"], "slice_param { axis: 1 slice_point: 5 }"),
    layer("cat2", "Concat", ["s2", "s1"]),
    layer("drop", "Dropout", "cat2", "cat2", "dropout_param { dropout_ratio: 0.3 }"),
    layer("reshape", "Reshape", "cat2", params="reshape_param { shape { dim: 0 dim: -1 } }"),
    layer("fc", "InnerProduct", "reshape", params="inner_product_param { num_output: 4 }"),
    layer("prob", "Softmax", "fc"),
])


def test_elementwise_concat_slice_reshape_and_softmax_equal_opencv(tmp_path):
    files = proto.write_net(tmp_path, "elementwise", ELEMENTWISE, {
        "conv": [_normal(6, 4, 1, 1), _normal(6)], "fc": [_normal(4, 12 * 30) * 0.3,
                                                          _normal(4)]})
    x = _normal(2, 4, 6, 5)
    assert_close(ours(*files, x), opencv(*files, x))


NORMALISATIONS = HEADER.format(name="norms", c=5, h=9, w=7) + "".join([
    # OpenCV reads no k (it takes 1); k is tested against Caffe's formula below.
    layer("lrn1", "LRN", "data", params="lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 }"),
    layer("lrn2", "LRN", "lrn1", params="lrn_param { local_size: 3 alpha: 0.2 beta: 0.6 "
          "norm_region: WITHIN_CHANNEL }"),
    layer("norm1", "Normalize", "lrn2", params="norm_param { across_spatial: false "
          "channel_shared: false }"),
    layer("norm2", "Normalize", "norm1", params="norm_param { across_spatial: true "
          "channel_shared: true }"),
    layer("prelu", "PReLU", "norm2", params="prelu_param { channel_shared: true }"),
    layer("gap", "Pooling", "prelu", params="pooling_param { pool: AVE global_pooling: true }"),
    layer("gmp", "Pooling", "prelu", params="pooling_param { pool: MAX global_pooling: true }"),
    layer("both", "Eltwise", ["gap", "gmp"]),
    layer("fc", "InnerProduct", "both", params="inner_product_param { num_output: 3 }"),
])


def test_lrn_normalize_shared_prelu_and_global_pooling_equal_opencv(tmp_path):
    files = proto.write_net(tmp_path, "norms", NORMALISATIONS, {
        "norm1": [RNG.uniform(1, 3, 5)], "norm2": [np.array([20.0])],
        "prelu": [np.array([0.2])], "fc": [_normal(3, 5), _normal(3)]})
    x = _normal(2, 5, 9, 7)
    assert_close(ours(*files, x), opencv(*files, x))


LEGACY = HEADER.format(name="legacy", c=1, h=13, w=11) + """
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1
         convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc"
         inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""


def test_the_legacy_layers_format_equals_opencv(tmp_path):
    files = proto.write_net(tmp_path, "legacy", LEGACY, {
        "conv": [_normal(4, 1, 3, 3), _normal(4)], "fc": [_normal(5, 4 * 6 * 5) * 0.1,
                                                     _normal(5)]},
        v1=True)
    x = _normal(2, 1, 13, 11)
    assert_close(ours(*files, x), opencv(*files, x))


def _variant(bn_layers):
    return (HEADER.format(name="variant", c=4, h=7, w=6)
            + layer("conv", "Convolution", "data", params="convolution_param { num_output: 4 "
                    "kernel_size: 3 pad: 1 }") + bn_layers
            + layer("fc", "InnerProduct", "bn", params="inner_product_param { num_output: 3 "
                    "}"))


def test_layers_opencv_lacks_equal_their_opencv_equivalents(tmp_path):
    # caffe-windows' BN and NVIDIA's BatchNorm with its own scale and bias are BatchNorm and
    # Scale; DepthwiseConvolution is a grouped convolution.
    mean, var = _normal(4), RNG.uniform(0.5, 2, 4).astype(np.float32)
    gamma, beta = _normal(4), _normal(4)
    shared = {"conv": [_normal(4, 4, 3, 3), _normal(4)], "fc": [_normal(3, 4 * 7 * 6),
                                                                _normal(3)]}
    x = _normal(2, 4, 7, 6)
    for kind, params, blobs, eps in (
            ("BN", "", [gamma, beta, mean, var], 0.0),
            ("BatchNorm", "batch_norm_param { eps: 0.001 }",
             [mean * 2, var * 2, np.array([2.0]), gamma, beta], 0.001)):
        files = proto.write_net(tmp_path, kind, _variant(layer("bn", kind, "conv", params=params)),
                          {**shared, "bn": blobs})
        equivalent = proto.write_net(tmp_path, "cv", _variant(
            layer("bn", "BatchNorm", "conv", "bn0", f"batch_norm_param {{ eps: {eps} }}")
            + layer("bn_scale", "Scale", "bn0", "bn", "scale_param { bias_term: true }")),
            {**shared, "bn": [mean, var, np.array([1.0])], "bn_scale": [gamma, beta]})
        assert_close(ours(*files, x), opencv(*equivalent, x))
    depthwise = (HEADER.format(name="dw", c=4, h=7, w=6) + layer(
        "dw", "DepthwiseConvolution", "data", params="convolution_param { num_output: 4 "
        "kernel_size: 3 stride: 2 }"))
    weights = {"dw": [_normal(4, 1, 3, 3), _normal(4)]}
    files = proto.write_net(tmp_path, "dw", depthwise, weights)
    grouped = proto.write_net(tmp_path, "grouped", depthwise.replace(
        '"DepthwiseConvolution"', '"Convolution"').replace("stride: 2", "stride: 2 group: 4"),
        weights)
    assert_close(ours(*files, x), opencv(*grouped, x))


def test_lrn_takes_caffes_k_and_inner_product_its_transpose(tmp_path):
    # Against Caffe's formulas in numpy: x / (k + alpha/n sum x^2)^beta over 3 channels.
    text = (HEADER.format(name="k", c=5, h=4, w=3)
            + layer("lrn", "LRN", "data", params="lrn_param { local_size: 3 alpha: 0.3 "
                    "beta: 0.75 k: 2 }")
            + layer("fc", "InnerProduct", "lrn", params="inner_product_param { num_output: 2 "
                    "transpose: true bias_term: false }"))
    weights = _normal(5 * 4 * 3, 2)
    x = _normal(2, 5, 4, 3)
    squares = np.pad(x ** 2, [(0, 0), (1, 1), (0, 0), (0, 0)])
    window = squares[:, :-2] + squares[:, 1:-1] + squares[:, 2:]
    expected = (x / (2 + 0.3 / 3 * window) ** 0.75).reshape(2, -1) @ weights
    assert_close(ours(*proto.write_net(tmp_path, "k", text, {"fc": [weights]}), x), expected)


def test_the_study_bn_network_written_in_caffe_imports_as_kerasbn_s_own(tmp_path):
    from kerasbn.nn import models
    model = models.build("bn", 5, widths=[8, 8, 8, 8, 8, 8, 16], norm="bvlc")
    for bn in [layer for layer in model.layers if layer.name.endswith("_bn")]:
        channels = bn.gamma.shape[0]
        bn.set_weights([_normal(channels), _normal(channels), np.float32(3.0),
                        _normal(channels) * 3, RNG.uniform(1, 6, channels)])
    files = caffe_speed.as_caffe(model, str(tmp_path))
    x = RNG.uniform(-1, 1, (2, 1, 50, 50)).astype(np.float32)
    mine = ours(*files, x)
    assert_close(mine, model(x.transpose(0, 2, 3, 1), training=False).numpy())
    assert_close(mine, opencv(*files, x))


CLASSIFIER = HEADER.format(name="classifier", c=3, h=32, w=28) + "".join([
    layer("conv", "Convolution", "data", params="convolution_param { num_output: 6 "
          "kernel_size: 3 stride: 2 }"),
    layer("relu", "ReLU", "conv", "conv"),
    layer("fc5", "InnerProduct", "conv", params="inner_product_param { num_output: 16 }"),
    layer("relu5", "ReLU", "fc5", "fc5"),
    layer("fc6", "InnerProduct", "fc5", params="inner_product_param { num_output: 4 }"),
    layer("prob", "Softmax", "fc6"),
])


def _classifier(directory):
    return proto.write_net(directory, "classifier", CLASSIFIER, {
        "conv": [_normal(6, 3, 3, 3) * 0.1, _normal(6)], "fc5": [_normal(16, 6 * 15 * 13)
                                                                  * 0.1, _normal(16)],
        "fc6": [_normal(4, 16), _normal(4)]})


@pytest.mark.slow
def test_an_import_serves_photos_as_caffe_preprocessed_them(tmp_path, capsys):
    import json

    import keras
    import tensorflow as tf
    from PIL import Image

    from kerasbn import predict
    prototxt, caffemodel = _classifier(tmp_path)
    (tmp_path / "names.txt").write_text("ann\nbob\ncy\ndee\n")
    out = tmp_path / "export"
    caffe_import.main(["caffe_import", f"--prototxt={prototxt}", f"--caffemodel={caffemodel}",
                       f"--out={out}", "--mean=104,117,123", "--scale=0.0078125",
                       f"--class_names={tmp_path / 'names.txt'}", "--threshold=0.3"])
    said = capsys.readouterr().out
    assert "32x28x3 BGR in, a 16-d embedding, 4 classes" in said
    assert {"saved_model.pb", "model.keras", "kerasbn_export.json"} <= set(os.listdir(out))
    marker = json.loads((out / "kerasbn_export.json").read_text())
    assert marker["threshold"] == 0.3 and marker["image_size"] == [32, 28]
    # The served probabilities of an RGB photo are OpenCV's on the BGR image, mean
    # subtracted and scaled as given.
    photo = RNG.integers(0, 256, (32, 28, 3), np.uint8)
    served = tf.saved_model.load(str(out)).signatures["serving_default"](
        images=tf.constant(photo[None]))
    caffe_input = ((photo[..., ::-1].astype(np.float32) - [104, 117, 123]) * 0.0078125)
    reference = opencv(prototxt, caffemodel, np.repeat(
        caffe_input.transpose(2, 0, 1)[None], 2, axis=0).astype(np.float32))[:1]
    assert_close(served["probabilities"].numpy(), reference)
    assert served["embedding"].shape == (1, 16)
    assert served["names"][0][0].numpy().decode() == ["ann", "bob", "cy", "dee"][
        int(np.argmax(reference))]
    # The Keras model file is the same network, from the photo's pixels.
    again = keras.saving.load_model(out / "model.keras")
    assert_close(tf.nn.softmax(again(photo[None].astype(np.float32))).numpy(), reference)
    Image.fromarray(photo).save(tmp_path / "a.png")
    Image.fromarray(255 - photo).save(tmp_path / "b.png")
    predict.main(["predict", f"--model={out}", "--compare", str(tmp_path / "a.png"),
                  str(tmp_path / "b.png")])
    assert "(threshold 0.3000, given at import (--threshold))" in capsys.readouterr().out


@pytest.mark.slow
def test_an_embedding_network_without_classifier_embeds_and_refuses_to_name(tmp_path,
                                                                             capsys):
    text = CLASSIFIER.split('layer { name: "fc6"')[0]
    files = proto.write_net(tmp_path, "embedder", text, {
        "conv": [_normal(6, 3, 3, 3), _normal(6)], "fc5": [_normal(16, 6 * 15 * 13),
                                                            _normal(16)]})
    out = tmp_path / "export"
    caffe_import.main(["caffe_import", f"--prototxt={files[0]}", f"--caffemodel={files[1]}",
                       f"--out={out}", "--channel_order=rgb"])
    assert "a 16-d embedding, no classes" in capsys.readouterr().out
    from PIL import Image

    from kerasbn import predict
    Image.fromarray(RNG.integers(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match="has no classifier .* --compare or embed a folder"):
        predict.main(["predict", f"--model={out}", str(tmp_path / "a.png")])
    predict.main(["predict", f"--model={out}", "--compare", str(tmp_path / "a.png"),
                  str(tmp_path / "a.png")])
    assert "cosine 1.0000 (the export holds no threshold: import with --pairs or " \
           "--threshold to store one)" in capsys.readouterr().out


def test_an_embedding_ending_in_batchnorm_and_scale_is_that_bn_s_output(tmp_path):
    # Caffe face networks often end their embedding with BatchNorm and Scale in place.
    text = CLASSIFIER.split('layer { name: "fc6"')[0] + layer(
        "fc5_bn", "BatchNorm", "fc5", "fc5") + layer(
        "fc5_scale", "Scale", "fc5", "fc5", "scale_param { bias_term: true }")
    files = proto.write_net(tmp_path, "embedder", text, {
        "conv": [_normal(6, 3, 3, 3), _normal(6)],
        "fc5": [_normal(16, 6 * 15 * 13), _normal(16)],
        "fc5_bn": [_normal(16), np.abs(_normal(16)) + 0.5, np.array([2.0], np.float32)],
        "fc5_scale": [_normal(16), _normal(16)]})
    imported = importer.build(*files, channel_order="rgb")
    model, manifest = imported.model, imported.manifest
    assert manifest.num_classes == 0
    x = RNG.uniform(0, 255, (2, 3, 32, 28)).astype(np.float32)
    embedding = model(x.transpose(0, 2, 3, 1)).numpy()
    assert model.get_layer("embedding").output is model.output
    assert_close(embedding, opencv(*files, x))


NAMES = HEADER.format(name="names", c=3, h=9, w=8) + "".join([
    # Names Caffe takes and Keras or TensorFlow's scopes do not, and names that differ only
    # in those characters (once a Python traceback: "cannot contain character `/`").
    layer("conv1/3x3", "Convolution", "data", params="convolution_param { num_output: 4 "
          "kernel_size: 3 pad: 1 }"),
    layer("conv1_3x3", "Convolution", "conv1/3x3", params="convolution_param { "
          "num_output: 4 kernel_size: 1 }"),
    layer("conv1 3x3", "Convolution", "conv1_3x3", params="convolution_param { "
          "num_output: 4 kernel_size: 1 }"),
    layer("conv1.3x3", "PReLU", "conv1 3x3"),
    layer("_plus0", "Eltwise", ["conv1.3x3", "conv1/3x3"]),
    layer("embedding", "Pooling", "_plus0", params="pooling_param { pool: MAX kernel_size: 2 "
          "stride: 2 }"),
    layer("fc/out", "InnerProduct", "embedding", params="inner_product_param { "
          "num_output: 5 }"),
])


def _names_weights():
    return {"conv1/3x3": [_normal(4, 3, 3, 3), _normal(4)],
            "conv1_3x3": [_normal(4, 4, 1, 1), _normal(4)],
            "conv1 3x3": [_normal(4, 4, 1, 1), _normal(4)],
            "conv1.3x3": [RNG.uniform(0, 0.5, 4)], "fc/out": [_normal(5, 4 * 5 * 4), _normal(5)]}


def test_any_layer_name_caffe_takes_imports_by_its_caffe_name_and_equals_opencv(tmp_path):
    files = proto.write_net(tmp_path, "names", NAMES, _names_weights())
    x = _normal(2, 3, 9, 8)
    assert_close(ours(*files, x), opencv(*files, x))
    planned = network.plan(proto.read_prototxt(files[0]))
    keras_names = [step.keras for step, _ in planned.steps]
    assert keras_names == ["conv1_3x3_2", "conv1_3x3", "conv1_3x3_3", "conv1.3x3",
                           "layer_plus0", "embedding_2", "fc_out"]
    # The embedding is chosen, and messages name layers, as the prototxt does.
    model = importer.build(*files, embedding_layer="fc/out").model
    assert model.get_layer("embedding").input.shape[1:] == (5,)
    assert model.get_layer("fc_out").input.shape[1:] == (80,)
    wrong = {**_names_weights(), "conv1 3x3": [_normal(4, 3, 1, 1), _normal(4)]}
    with pytest.raises(network.CaffeError, match=r"layer conv1 3x3 \(Convolution\): blob 0 "):
        ours(*proto.write_net(tmp_path, "wrong", NAMES, wrong), x)


def test_keras_names_are_valid_distinct_and_the_same_every_time():
    names = ["a/b", "a_b", "a b", "a.b", "-x", "_y", "image", "embedding", "é", "a>b"]
    mapped = network.keras_names(names)
    assert mapped == network.keras_names(names)
    assert len(set(mapped.values())) == len(names)
    assert not set(mapped.values()) & set(network.RESERVED)
    assert all(network._KERAS_NAME.fullmatch(n) and ">" not in n for n in mapped.values())
    assert mapped["a_b"] == "a_b" and mapped["a.b"] == "a.b"


def caffe_pooling(x, method, kernel, stride, pad, round_mode="CEIL"):
    """Caffe's Pooling forward in NumPy, transcribed from BVLC's pooling_layer.cpp
    (Reshape, Forward_cpu) for N,C,H,W `x`. OpenCV is not the reference here: it applies the
    last-window clip per axis, where Caffe clips both axes when either is padded, and it
    reads no round_mode."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    height, width = x.shape[2:]
    rounding = np.ceil if round_mode == "CEIL" else np.floor
    pooled_h = int(rounding((height + 2 * ph - kh) / sh)) + 1
    pooled_w = int(rounding((width + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        if (pooled_h - 1) * sh >= height + ph:
            pooled_h -= 1
        if (pooled_w - 1) * sw >= width + pw:
            pooled_w -= 1
    out = np.zeros(x.shape[:2] + (pooled_h, pooled_w), np.float32)
    for i in range(pooled_h):
        for j in range(pooled_w):
            hstart, wstart = i * sh - ph, j * sw - pw
            if method == "MAX":
                hend, wend = min(hstart + kh, height), min(wstart + kw, width)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                out[:, :, i, j] = x[:, :, hstart:hend, wstart:wend].max(axis=(2, 3))
            else:
                hend, wend = min(hstart + kh, height + ph), min(wstart + kw, width + pw)
                size = (hend - hstart) * (wend - wstart)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, height), min(wend, width)
                out[:, :, i, j] = x[:, :, hstart:hend, wstart:wend].sum(axis=(2, 3)) / size
    return out


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("kernel, stride, pad, round_mode, size", [
    ((3, 3), (2, 2), (0, 0), "FLOOR", (10, 11)),  # FLOOR: 4x5 where CEIL gives 5x5
    ((3, 3), (2, 2), (1, 1), "CEIL", (10, 11)),
    ((3, 3), (2, 2), (1, 1), "FLOOR", (10, 11)),
    # One axis padded: Caffe clips the unpadded one too (2x3; a per-axis rule gives 3x3).
    ((1, 3), (2, 2), (0, 1), "CEIL", (4, 5)),
    ((2, 2), (3, 3), (1, 0), "CEIL", (7, 6)),
])
def test_pooling_follows_caffes_source(method, kernel, stride, pad, round_mode, size,
                                       tmp_path):
    text = HEADER.format(name="pool", c=3, h=size[0], w=size[1]) + layer(
        "pool", "Pooling", "data", params=f"pooling_param {{ pool: {method} kernel_h: "
        f"{kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} stride_w: {stride[1]} "
        f"pad_h: {pad[0]} pad_w: {pad[1]} round_mode: {round_mode} }}")
    x = _normal(2, 3, *size)
    expected = caffe_pooling(x, method, kernel, stride, pad, round_mode)
    built = network.build(network.plan(proto.read_prototxt(
        proto.write_net(tmp_path, "pool", text, {})[0])), {})
    mine = built.model(x.transpose(0, 2, 3, 1)).numpy().transpose(0, 3, 1, 2)
    assert mine.shape == expected.shape
    np.testing.assert_allclose(mine, expected, rtol=1e-6, atol=1e-6)


def test_settings_kerasbn_does_not_compute_are_refused_by_name(tmp_path):
    """use_global_stats: false once imported as true, silently: Caffe normalises such a
    deploy network's every batch by its own statistics."""
    base = HEADER.format(name="refused", c=3, h=8, w=8)
    conv = layer("conv", "Convolution", "data", params="convolution_param { num_output: 4 "
                 "kernel_size: 3 }")
    for extra, said in (
            (layer("bn", "BatchNorm", "conv", params="batch_norm_param { use_global_stats: "
                   "false }"), "layer bn (BatchNorm): batch_norm_param { use_global_stats: "
             "false } normalises every batch by its own statistics"),
            (layer("c3", "Convolution", "conv", params="convolution_param { num_output: 2 "
                   "kernel_size: 1 kernel_size: 1 kernel_size: 1 }"), "layer c3 "
             "(Convolution): a kernel, stride, pad or dilation of more than 2 axes"),
            (layer("c4", "Convolution", "conv", params="convolution_param { num_output: 2 "
                   "kernel_size: 1 axis: 2 }"), "convolution_param { axis: 2 }")):
        with pytest.raises(network.CaffeError, match=re.escape(said)):
            network.plan(proto.read_prototxt(proto.write_net(tmp_path, "r", base + conv + extra,
                                                             {})[0]))
    kept = base + conv + layer("bn", "BatchNorm", "conv", params="batch_norm_param { "
                                "use_global_stats: true }")
    assert network.plan(proto.read_prototxt(proto.write_net(tmp_path, "k", kept, {})[0]))


MIRROR = HEADER.format(name="mirror", c=3, h=6, w=5) + "".join([
    # happynear's mirror fusion: a face and its mirror embedded in one batch, then summed
    # and L2-normalised (AM-Softmax's and NormFace's deploy files).
    layer("flip", "Flip", "data"),
    layer("both", "Concat", ["data", "flip"], params="concat_param { axis: 0 }"),
    layer("conv", "Convolution", "both", params="convolution_param { num_output: 4 "
          "kernel_size: 3 }"),
    layer("fc", "InnerProduct", "conv", params="inner_product_param { num_output: 6 }"),
    layer("halves", "Slice", "fc", ["orig", "mirror"], "slice_param { axis: 0 }"),
    layer("sum", "Eltwise", ["orig", "mirror"]),
    layer("norm", "Normalize", "sum", params='normalize_param { normalize_type: "L2" }'),
])


def test_ssd_heads_permute_flatten_reshape_and_softmax_on_axis_2_equal_opencv(tmp_path):
    text = HEADER.format(name="head", c=3, h=5, w=4) + "".join([
        layer("conf", "Convolution", "data", params="convolution_param { num_output: 6 "
              "kernel_size: 3 pad: 1 }"),
        layer("perm", "Permute", "conf", params="permute_param { order: 0 order: 2 order: 3 "
              "order: 1 }"),
        layer("flat", "Flatten", "perm"),
        layer("pairs", "Reshape", "flat", params="reshape_param { shape { dim: 0 dim: -1 "
              "dim: 2 } }"),
        layer("prob", "Softmax", "pairs", params="softmax_param { axis: 2 }"),
    ])
    files = proto.write_net(tmp_path, "head", text, {"conf": [_normal(6, 3, 3, 3), _normal(6)]})
    x = _normal(2, 3, 5, 4)
    assert_close(ours(*files, x), opencv(*files, x))


def test_mirror_fusion_and_axpy_equal_their_definitions(tmp_path):
    conv, fc = _normal(4, 3, 3, 3), _normal(6, 4 * 4 * 3)
    x = _normal(2, 3, 6, 5)
    mine = ours(*proto.write_net(tmp_path, "mirror", MIRROR, {"conv": [conv, _normal(4) * 0],
                                                               "fc": [fc, _normal(6) * 0]}), x)

    def embed(images):  # the trunk, by hand: a valid 3x3 convolution, then fc
        windows = np.lib.stride_tricks.sliding_window_view(images, (3, 3), axis=(2, 3))
        maps = np.einsum("nchwij,ocij->nohw", windows, conv)
        return maps.reshape(len(images), -1) @ fc.T

    summed = embed(x) + embed(x[..., ::-1])
    np.testing.assert_allclose(mine, summed / np.linalg.norm(summed, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)
    # Axpy: a * x + y, `a` per sample and channel.
    text = HEADER.format(name="axpy", c=3, h=4, w=4) + "".join([
        layer("gap", "Pooling", "data", params="pooling_param { pool: AVE global_pooling: "
              "true }"),
        layer("gate", "Sigmoid", "gap"),
        layer("conv", "Convolution", "data", params="convolution_param { num_output: 3 "
              "kernel_size: 1 bias_term: false }"),
        layer("axpy", "Axpy", ["gate", "conv", "data"])])
    w = _normal(3, 3, 1, 1)
    x = _normal(2, 3, 4, 4)
    gate = 1 / (1 + np.exp(-x.mean(axis=(2, 3), keepdims=True)))
    expected = gate * np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0]) + x
    np.testing.assert_allclose(ours(*proto.write_net(tmp_path, "axpy", text, {"conv": [w]}), x),
                               expected, rtol=1e-5, atol=1e-5)


def _refusal(tmp_path, prototxt, caffemodel, *flags):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        caffe_import.main(["caffe_import", f"--prototxt={prototxt}",
                           f"--caffemodel={caffemodel}", f"--out={out}", *flags])
    assert not out.exists()
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_broken_files_and_networks_are_one_line_and_write_nothing(tmp_path):
    prototxt, caffemodel = _classifier(tmp_path)
    data = open(caffemodel, "rb").read()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[:len(data) // 2])
    assert "is truncated or not a caffemodel" in _refusal(tmp_path, prototxt, cut)
    broken = tmp_path / "broken.prototxt"
    broken.write_text(CLASSIFIER.replace('num_output: 16 }', 'num_output: sixteen }'))
    assert "syntax error at line 6, column 102: Couldn't parse integer" in _refusal(
        tmp_path, broken, caffemodel)

    def variant(name, text, weights=None):
        return _refusal(tmp_path, *proto.write_net(tmp_path, name, text, weights or {
            "conv": [_normal(6, 3, 3, 3), _normal(6)], "fc5": [_normal(16, 6 * 15 * 13),
                                                                _normal(16)],
            "fc6": [_normal(4, 16), _normal(4)]}))

    assert "layer fc6 (InnerProduct): blob 0 has shape [4, 15], the layer needs [4, 16]" in \
        variant("shape", CLASSIFIER, {"conv": [_normal(6, 3, 3, 3), _normal(6)],
                                      "fc5": [_normal(16, 6 * 15 * 13), _normal(16)],
                                      "fc6": [_normal(4, 15), _normal(4)]})
    assert "layer fc6 (InnerProduct) has no weights in the caffemodel" in variant(
        "missing", CLASSIFIER, {"conv": [_normal(6, 3, 3, 3), _normal(6)],
                                "fc5": [_normal(16, 6 * 15 * 13), _normal(16)]})
    assert "layer fc6 (InnerProduct) reads blob 'nothing', which no earlier layer " \
           "produces" in variant("bottom", CLASSIFIER.replace('bottom: "fc5" top: "fc6"',
                                                              'bottom: "nothing" top: "fc6"'))
    assert "layer crop has type Crop, which kerasbn does not import; supported: Axpy, " \
           "BatchNorm" in \
        variant("unknown", CLASSIFIER.replace('layer { name: "fc6"', layer(
            "crop", "Crop", "fc5", "fc5") + 'layer { name: "fc6"'))


def test_bad_values_are_refused_at_import_by_name_and_write_nothing(tmp_path):
    """Each once gave a traceback or an export whose embeddings were all zeros, whose
    threshold said a photo differs from itself, or whose predict blamed the photos."""
    def refused(*flags, text=CLASSIFIER, weights=None):
        return _refusal(tmp_path, *proto.write_net(tmp_path, "variant", text, weights or {
            "conv": [_normal(6, 3, 3, 3), _normal(6)], "fc5": [_normal(16, 6 * 15 * 13),
                                                                _normal(16)],
            "fc6": [_normal(4, 16), _normal(4)]}), *flags)

    broken = _normal(6, 3, 3, 3)
    broken[0, 0, 0, :2] = [np.nan, np.inf]
    assert "layer conv: a blob holds 2 values that are NaN or infinite" in refused(weights={
        "conv": [broken, _normal(6)], "fc5": [_normal(16, 6 * 15 * 13), _normal(16)],
        "fc6": [_normal(4, 16), _normal(4)]})
    assert "--mean=nan,1,2 is not a number" in refused("--mean=nan,1,2")
    assert "--mean takes one value or 3" in refused("--mean=1,2")
    assert "--scale=0.0 must be a positive number" in refused("--scale=0")
    assert "--scale=nan must be a positive number" in refused("--scale=nan")
    assert "--threshold=nan is not a cosine" in refused("--threshold=nan")
    assert "--threshold" in refused("--threshold=1.5")
    assert "input 'data' has shape [2, 3, 0, 28]: each of C, H and W must be positive" in \
        refused(text=CLASSIFIER.replace("input_dim: 32", "input_dim: 0"))
    assert "input 'data' takes 4 channels; kerasbn feeds networks photos" in refused(
        text=CLASSIFIER.replace("input_dim: 3 ", "input_dim: 4 "))
    assert "layer conv (Convolution): its 3x3 window is larger than its padded 2x2 input" in \
        refused("--input_size=2,2")


@pytest.mark.slow
def test_the_threshold_is_chosen_on_pairs_of_photos(tmp_path, att_faces, capsys):
    import json
    text = HEADER.format(name="gray", c=1, h=32, w=32) + layer(
        "conv", "Convolution", "data", params="convolution_param { num_output: 4 "
        "kernel_size: 5 stride: 3 }") + layer("fc", "InnerProduct", "conv",
                                             params="inner_product_param { num_output: 8 }")
    files = proto.write_net(tmp_path, "gray", text, {"conv": [_normal(4, 1, 5, 5), _normal(4)],
                                               "fc": [_normal(8, 4 * 10 * 10), _normal(8)]})
    lines = ["1\t20"] + [f"s{i}\t1\t2" for i in range(1, 21)] + [
        f"s{i}\t1\ts{i + 20}\t1" for i in range(1, 21)]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "export"
    caffe_import.main(["caffe_import", f"--prototxt={files[0]}", f"--caffemodel={files[1]}",
                       f"--out={out}", "--mean=127.5", "--scale=0.0078125",
                       f"--pairs={tmp_path / 'pairs.txt'}", f"--image_root={att_faces}"])
    said = capsys.readouterr().out
    marker = json.loads((out / "kerasbn_export.json").read_text())
    assert f"{tmp_path / 'pairs.txt'}: accuracy " in said
    assert f"threshold {marker['threshold']:.4f}" in said
    assert marker["threshold_source"] == f"chosen at import on {tmp_path / 'pairs.txt'}"
    # evaluate on the export finds the accuracy the import chose its threshold by.
    from kerasbn import evaluate
    accuracy = said.split("accuracy ")[1].split()[0]
    evaluate.main(["evaluate", f"--model={out}", f"--pairs={tmp_path / 'pairs.txt'}",
                   f"--image_root={att_faces}", f"--out={tmp_path / 'evaluation'}"])
    assert f"| {accuracy} |" in capsys.readouterr().out


def test_the_caffe_bench_times_both_and_reports_the_difference(tmp_path, capsys):
    files = caffe_speed.write_study_bn(str(tmp_path), num_classes=10)
    result = caffe_speed.run(*files, 4, 1, 2)
    assert len(result["kerasbn"]) == len(result["opencv"]) == 2
    assert result["max_difference"] < 1e-4 and result["convert_s"] > 0
    assert "kerasbn/OpenCV" in capsys.readouterr().out


BACKBONE = HEADER.format(name="backbone", c=3, h=32, w=32) + "".join([
    layer("conv", "Convolution", "data", params="convolution_param { num_output: 6 "
          "kernel_size: 3 stride: 2 bias_term: false }"),
    layer("bn", "BatchNorm", "conv", "conv", "batch_norm_param { moving_average_fraction: "
          "0.9 }"),
    layer("scale", "Scale", "conv", "conv", "scale_param { bias_term: true }"),
    layer("prelu", "PReLU", "conv", "conv"),
    layer("fc5", "InnerProduct", "conv", params="inner_product_param { num_output: 16 }"),
])


@pytest.mark.slow
def test_an_import_trains_as_a_backbone_under_a_margin_head(tmp_path, capsys):
    import keras
    import tensorflow as tf
    from conftest import run_train, train_args

    from data_tools import synth
    from kerasbn.nn import norms
    from kerasbn.runs import checkpoints, network
    from kerasbn.runs.run_dir import RunDir, stored_config
    files = proto.write_net(tmp_path, "backbone", BACKBONE, {
        "conv": [_normal(6, 3, 3, 3) * 0.3], "bn": [_normal(6), RNG.uniform(1, 3, 6),
                                                   np.array([1.0])],
        "scale": [_normal(6), _normal(6)], "prelu": [RNG.uniform(0, 0.3, 6)],
        "fc5": [_normal(16, 6 * 15 * 15) * 0.1, _normal(16)]})
    export = tmp_path / "import"
    caffe_import.main(["caffe_import", f"--prototxt={files[0]}", f"--caffemodel={files[1]}",
                       f"--out={export}", "--mean=127.5", "--scale=0.0078125"])
    data = tmp_path / "data"
    synth.build(str(data), 5, 12, 0.25, 32, 0, "raw", 64, False, channels=3)
    run_dir = str(tmp_path / "run")
    run_train(train_args(str(data), run_dir, backbone=export, head="arcface", max_iter=4,
                         test_interval=4, snapshot=4, freeze_backbone_iter=2))
    # It was once introduced as the flagfile's --model and --norm, which it does not train.
    assert f"{run_dir}: imported {export} + arcface, its own BN, " in capsys.readouterr().out
    config = stored_config(run_dir)
    # Fed the dataset's normalised images, the backbone (as built, before training) gives the
    # import's embedding of the pixels: the normalisation is undone before Caffe's own
    # preprocessing.
    model = network.build_and_compile(config)
    pixels = RNG.integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    mean, std = (np.array(v, np.float32) for v in config.input_norm)
    features = keras.Model(model.input, model.get_layer("embedding").output)
    imported = keras.saving.load_model(export / "model.keras")
    wanted = keras.Model(imported.input, imported.get_layer("embedding").output)(pixels)
    assert_close(features((pixels - mean) / std).numpy(), wanted.numpy())
    # Frozen for two iterations the imported BN kept the caffemodel's statistics (scale
    # factor 1); the two after moved them by BVLC's rule at the prototxt's
    # moving_average_fraction: s = 0.9 s + 1, twice.
    checkpoints.restore_latest(RunDir(run_dir), model)
    [bn] = [layer for layer in model.get_layer("backbone").layers
            if isinstance(layer, norms.BVLCBatchNorm)]
    assert float(bn.scale_factor.numpy()) == pytest.approx(1.0 * 0.9 ** 2 + 0.9 + 1)
    # The run's export serves it.
    served = tf.saved_model.load(RunDir(run_dir).export).signatures["serving_default"](
        images=tf.constant(pixels[:1].astype(np.uint8)))
    assert served["probabilities"].shape == (1, 5) and served["embedding"].shape == (1, 16)


TWO_HEADS = HEADER.format(name="two_heads", c=3, h=24, w=24) + "".join([
    # MTCNN's RNet, in small: a trunk, then a face classifier and a box regressor.
    layer("conv1/3x3", "Convolution", "data", params="convolution_param { num_output: 4 "
          "kernel_size: 3 stride: 2 }"),
    layer("prelu1", "PReLU", "conv1/3x3"),
    layer("conv4", "InnerProduct", "prelu1", params="inner_product_param { num_output: 8 }"),
    layer("conv5-1", "InnerProduct", "conv4", params="inner_product_param { num_output: 2 }"),
    layer("conv5-2", "InnerProduct", "conv4", params="inner_product_param { num_output: 4 }"),
    layer("prob1", "Softmax", "conv5-1"),
])


@pytest.mark.slow
def test_an_import_of_several_outputs_keeps_each_by_name(tmp_path, capsys):
    import keras
    import tensorflow as tf

    files = proto.write_net(tmp_path, "two_heads", TWO_HEADS, {
        "conv1/3x3": [_normal(4, 3, 3, 3), _normal(4)], "prelu1": [RNG.uniform(0, 0.3, 4)],
        "conv4": [_normal(8, 4 * 11 * 11) * 0.1, _normal(8)],
        "conv5-1": [_normal(2, 8), _normal(2)], "conv5-2": [_normal(4, 8), _normal(4)]})
    assert "the network has 2 outputs (conv5-2, prob1); name the layer" in _refusal(
        tmp_path, *files)
    out = tmp_path / "out"
    caffe_import.main(["caffe_import", f"--prototxt={files[0]}", f"--caffemodel={files[1]}",
                       f"--out={out}", "--embedding_layer=conv4"])
    printed = capsys.readouterr().out
    assert "every output in serving_raw: conv5-2, prob1" in printed
    assert "1 layer names are not Keras names (conv1/3x3 as conv1_3x3, ...)" in printed
    marker = json.loads((out / "kerasbn_export.json").read_text())
    assert marker["caffe"] == {"layer_names": {"conv1_3x3": "conv1/3x3"},
                               "outputs": {"conv5-2": "conv5-2", "prob1": "prob1"}}
    pixels = RNG.integers(0, 256, (2, 24, 24, 3)).astype(np.uint8)
    raw = tf.saved_model.load(str(out)).signatures["serving_raw"](images=tf.constant(pixels))
    # The network as OpenCV runs it on the pixels Caffe's preprocessing (BGR) makes.
    bgr = pixels[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    net = cv2.dnn.readNetFromCaffe(*files)
    net.setInput(bgr)
    for name, value in zip(("conv5-2", "prob1"), net.forward(["conv5-2", "prob1"])):
        assert_close(raw[name].numpy(), value)
    model = keras.saving.load_model(out / "model.keras")
    assert [o.shape[-1] for o in model.outputs] == [8, 4, 2]
    assert model.get_layer("prob1>output").blob == "prob1"


@pytest.mark.slow
def test_a_112x96_import_fine_tunes_on_faces_aligned_at_112x96(tmp_path, att_faces, capsys):
    """SphereFace's and CosFace's crop: build_records --align --image_size 112,96 makes the
    dataset an imported 112x96 network trains on (once no tool could make one)."""
    from conftest import framed_faces, run_train, train_args

    from data_tools import build_records
    from kerasbn.runs.run_dir import RunDir
    text = BACKBONE.replace("input_dim: 32 input_dim: 32", "input_dim: 112 input_dim: 96")
    files = proto.write_net(tmp_path, "sphere", text.replace("stride: 2", "stride: 4"), {
        "conv": [_normal(6, 3, 3, 3) * 0.3], "bn": [_normal(6), RNG.uniform(1, 3, 6),
                                                   np.array([1.0])],
        "scale": [_normal(6), _normal(6)], "prelu": [RNG.uniform(0, 0.3, 6)],
        "fc5": [_normal(16, 6 * 28 * 24) * 0.1, _normal(16)]})
    export = tmp_path / "import"
    caffe_import.main(["caffe_import", f"--prototxt={files[0]}", f"--caffemodel={files[1]}",
                       f"--out={export}", "--mean=127.5", "--scale=0.0078125"])
    photos = framed_faces(att_faces, tmp_path / "photos", images=6)
    data = tmp_path / "data"
    build_records.main(["build_records", str(photos), f"--out={data}", "--align",
                        "--image_size=112,96", "--channels=3", "--test_fraction=0.34"])
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["image_size"] == [112, 96] and manifest["aligned"]["faces_missing"] == 0
    run_dir = str(tmp_path / "run")
    run_train(train_args(str(data), run_dir, backbone=export, head="arcface", max_iter=4,
                         test_interval=4, snapshot=4, batch_size=4))
    assert RunDir(run_dir).finished()
    assert f"{run_dir}: imported {export} + arcface" in capsys.readouterr().out


@pytest.mark.slow
def test_a_backbone_that_is_no_import_or_of_another_size_is_one_line(tmp_path):
    from conftest import make_synth, run_train, train_args
    make_synth(tmp_path / "data", image_size=48)
    files = proto.write_net(tmp_path, "backbone", BACKBONE, {
        "conv": [_normal(6, 3, 3, 3)], "bn": [_normal(6), RNG.uniform(1, 3, 6),
                                             np.array([1.0])],
        "scale": [_normal(6), _normal(6)], "prelu": [RNG.uniform(0, 0.3, 6)],
        "fc5": [_normal(16, 6 * 15 * 15), _normal(16)]})
    caffe_import.main(["caffe_import", f"--prototxt={files[0]}", f"--caffemodel={files[1]}",
                       f"--out={tmp_path / 'import'}"])
    for backbone, message in ((tmp_path, "holds no model.keras; give an export written by "
                               "python -m kerasbn.caffe_import"),
                              (tmp_path / "import", "takes 32x32x3 images but the dataset "
                               "holds 48x48x1")):
        with pytest.raises(SystemExit, match=message):
            run_train(train_args(str(tmp_path / "data"), str(tmp_path / "run"),
                                 backbone=backbone))
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
def test_an_import_converts_to_a_portable_core_checked_against_keras(tmp_path, capsys):
    # ONNX; LiteRT goes through the same portable.write (tests/test_export.py runs both).
    fmt = "onnx"
    import json

    from kerasbn import export
    prototxt, caffemodel = _classifier(tmp_path)
    caffe_import.main(["caffe_import", f"--prototxt={prototxt}", f"--caffemodel={caffemodel}",
                       f"--out={tmp_path / 'export'}", "--mean=127.5", "--threshold=0.4"])
    capsys.readouterr()
    out = tmp_path / f"core.{'tflite' if fmt == 'litert' else 'onnx'}"
    export.main(["export", f"--model={tmp_path / 'export'}", f"--format={fmt}",
                 f"--out={out}"])
    assert "max |difference| from Keras on 64 noise images" in capsys.readouterr().out
    sidecar = json.loads(open(f"{out}.json").read())
    assert sidecar["threshold"] == 0.4 and sidecar["class_names"][0] == "class 0"
    assert set(sidecar["outputs"]) == {"embedding", "probabilities"}
    with pytest.raises(SystemExit, match="is a SavedModel already"):
        export.main(["export", f"--model={tmp_path / 'export'}"])
