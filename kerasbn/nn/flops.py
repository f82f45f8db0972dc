"""A network's floating-point operations per image, so a measured step says how far it is from
the hardware's peak (utils.hardware.cpu_peak; `bench --bench=peer` on the field's networks).

FLOPs count multiply-adds as two, in convolutions and fully connected layers only (BN,
PReLU and additions are a few percent more, as fvcore and ptflops leave them out too). A
training step is the forward pass, the weights' gradients (one more forward's worth) and the
inputs' gradients (another, except where no weight lies before a layer: the image needs no gradient).
"""

import keras


def _macs(layer):
    """Multiply-adds of `layer` on one image: a convolution's output size times its kernel
    (over the group's inputs), a dense layer's weights; 0 for any other layer."""
    if isinstance(layer, keras.layers.Conv2D):
        _, height, width, filters = layer.output.shape
        kernel_h, kernel_w, inputs, _ = layer.kernel.shape
        return height * width * filters * kernel_h * kernel_w * inputs
    if isinstance(layer, keras.layers.Dense):
        return int(layer.kernel.shape[0] * layer.kernel.shape[1])
    return 0


def per_image(model):
    """{"forward", "training"}: FLOPs of one image through functional `model`, and of one
    training step on it. A layer's input gradient is counted only where a weight lies
    before it."""
    trained = set()  # ids of tensors that depend on a trainable weight
    forward = backward = 0
    for layer in model.layers:
        macs = _macs(layer)
        inputs_trained = any(id(t) in trained for t in keras.tree.flatten(layer.input))
        forward += macs
        backward += 2 * macs if inputs_trained else macs
        if inputs_trained or layer.trainable_weights:
            trained.update(id(t) for t in keras.tree.flatten(layer.output))
    return {"forward": 2 * forward, "training": 2 * (forward + backward)}
