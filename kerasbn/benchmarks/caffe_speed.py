"""An imported Caffe network against OpenCV's dnn module running the same files on the same
CPU (`bench --bench=caffe`): conversion time, images/s of each over alternating rounds on one
cached batch, and the largest difference between their outputs.

Without --prototxt it measures the study's BN network (kerasbn.nn.models' `bn`, 14,700
classes, 50x50 gray, BVLC's BatchNorm + Scale) written as Caffe files with random weights
(`write_study_bn`), the network the tests also import."""

import time

import keras
import numpy as np

from kerasbn.caffe import network, proto
from kerasbn.nn import models, norms


def _layer(name, kind, bottom, params="", top=None):
    return (f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top or name}" '
            f'{params} }}\n')


def as_caffe(model, directory, name="study_bn"):
    """(prototxt, caffemodel) written in `directory` for kerasbn's study network `model`
    (built with norm `bvlc`): Convolution, BatchNorm + Scale, ReLU, Pooling rounding up,
    InnerProduct, its weights in Caffe's layouts."""
    height, width, channels = model.input.shape[1:]
    text = (f'name: "{name}"\ninput: "data"\ninput_dim: 1 input_dim: {channels} '
            f'input_dim: {height} input_dim: {width}\n')
    weights = {}
    bottom = "data"
    for layer in model.layers[1:]:
        blobs = []
        if isinstance(layer, keras.layers.Conv2D):
            text += _layer(layer.name, "Convolution", bottom, "convolution_param { num_output: "
                           f"{layer.filters} kernel_size: 3 pad: 1 bias_term: "
                           f"{str(layer.use_bias).lower()} }}")
            blobs = [layer.kernel.numpy().transpose(3, 2, 0, 1)] + (
                [layer.bias.numpy()] if layer.use_bias else [])
        elif isinstance(layer, norms.BVLCBatchNorm):
            gamma, beta, factor, mean, variance = [w.numpy() for w in layer.weights]
            text += _layer(layer.name, "BatchNorm", bottom, "batch_norm_param { eps: "
                           f"{layer.epsilon:g} }}")
            text += _layer(f"{layer.name}_scale", "Scale", layer.name,
                           "scale_param { bias_term: true }", top=layer.name)
            blobs = [mean, variance, factor.reshape(1)]
            weights[f"{layer.name}_scale"] = [gamma, beta]
        elif isinstance(layer, keras.layers.ReLU):
            text += _layer(layer.name, "ReLU", bottom)
        elif isinstance(layer, keras.layers.MaxPooling2D):
            text += _layer(layer.name, "Pooling", bottom, "pooling_param { pool: MAX "
                           "kernel_size: 2 stride: 2 }")
        elif isinstance(layer, keras.layers.GlobalAveragePooling2D):
            text += _layer(layer.name, "Pooling", bottom, "pooling_param { pool: AVE "
                           "global_pooling: true }")
        elif isinstance(layer, keras.layers.Dense):
            text += _layer(layer.name, "InnerProduct", bottom, "inner_product_param { "
                           f"num_output: {layer.units} }}")
            blobs = [layer.kernel.numpy().T, layer.bias.numpy()]
        else:
            raise ValueError(f"{layer.name} ({type(layer).__name__}) has no Caffe twin here")
        if blobs:
            weights[layer.name] = blobs
        bottom = layer.name
    return proto.write_net(directory, name, text, weights)


def write_study_bn(directory, num_classes=14700, seed=0):
    """The study's BN network with random weights and BN statistics, as Caffe files."""
    keras.utils.set_random_seed(seed)
    model = models.build("bn", num_classes, norm="bvlc")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, norms.BVLCBatchNorm):
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               np.float32(3.0), rng.normal(0, 0.3, channels),
                               rng.uniform(1, 6, channels)])
    return as_caffe(model, directory)


def run(prototxt, caffemodel, batch_size, steps, rounds):
    """Prints and returns {convert_s, kerasbn, opencv (lists of images/s), max_difference}."""
    import cv2
    import tensorflow as tf
    start = time.perf_counter()
    built = network.build(network.plan(proto.read_prototxt(prototxt)),
                          network.weights_of(proto.read_caffemodel(caffemodel)))
    convert_s = time.perf_counter() - start
    height, width, channels = built.model.input.shape[1:]
    x = np.random.default_rng(0).uniform(-1, 1, (batch_size, channels, height, width)).astype(
        np.float32)
    forward = tf.function(lambda images: built.model(images, training=False))
    nhwc = tf.constant(x.transpose(0, 2, 3, 1))
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    net.setInput(x)
    ours, theirs = forward(nhwc).numpy(), net.forward()
    if ours.ndim == 4:
        ours = ours.transpose(0, 3, 1, 2)
    difference = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    rates = {"kerasbn": [], "opencv": []}
    for _ in range(rounds):
        for name, once in (("kerasbn", lambda: forward(nhwc).numpy()),
                           ("opencv", net.forward)):
            once()
            begin = time.perf_counter()
            for _ in range(steps):
                once()
            rates[name].append(steps * batch_size / (time.perf_counter() - begin))
    ratios = [a / b for a, b in zip(rates["kerasbn"], rates["opencv"])]
    print(f"{prototxt}: converted in {convert_s:.2f}s; batch {batch_size}, {rounds} alternating "
          f"rounds: kerasbn {min(rates['kerasbn']):.0f}-{max(rates['kerasbn']):.0f} images/s, "
          f"OpenCV dnn {min(rates['opencv']):.0f}-{max(rates['opencv']):.0f}, kerasbn/OpenCV "
          f"{min(ratios):.2f}-{max(ratios):.2f}x; largest difference from OpenCV "
          f"{difference:.1e} of the output's scale")
    return {"convert_s": convert_s, **rates, "max_difference": difference}

