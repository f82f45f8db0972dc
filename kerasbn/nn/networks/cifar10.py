"""Caffe's CIFAR-10 examples, the nets the study's side study compared BN implementations on,
as their prototxts define them at BVLC/caffe commit ad248bd3a2102b82bfe7f1603134ee87d759d88d
(the BN example changed between commits; later ones drop its learned scale and shift), with
the prototxts' per-layer Gaussian fillers as the networks' own. Pools round up as Caffe's
(32 -> 16 -> 8 -> 4). Both take 32x32 RGB and the softmax head only.
"""

import keras

from kerasbn.nn import registry

# The prototxts' weight filler stds, per layer (the classifier's is the registration's).
STDS = {
    "cifar10_quick": {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "embedding": 0.1},
    "cifar10_full_sigmoid_bn": {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01},
}
INPUT = {"image_size": (32, 32), "channels": 3}


def check(settings):
    if settings.head != "softmax" or settings.embedding != "pool":
        return (f"--head and --embedding apply to the face networks, not "
                f"--model={settings.name}; drop them")
    return None


def _args(parts, network, layer):
    return {"kernel_regularizer": parts.l2(), "bias_regularizer": parts.bias_l2(),
            "kernel_initializer": parts.filler(
                keras.initializers.RandomNormal(stddev=STDS[network][layer]))}


def _conv(x, filters, name, parts, use_bias, network):
    x = keras.layers.Conv2D(filters, 5, padding="same", use_bias=use_bias, name=name,
                            **_args(parts, network, name))(x)
    return parts.norm(f"{name}_bn")(x)


@registry.register_network("cifar10_quick", family="cifar", made_for=INPUT, check=check,
                           classifier_std=0.1)
def quick(inputs, settings, parts):
    """examples/cifar10/cifar10_quick_train_test.prototxt, with a norm after each conv:
    conv 32 5x5, max pool 3/2, ReLU; conv 32 5x5, ReLU, avg pool 3/2; conv 64 5x5, ReLU,
    avg pool 3/2; ip 64 (`embedding`); ip classes."""
    name = "cifar10_quick"
    x = _conv(inputs, 32, "conv1", parts, True, name)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.ReLU(name="relu2")(_conv(x, 32, "conv2", parts, True, name))
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool2")(x)
    x = keras.layers.ReLU(name="relu3")(_conv(x, 64, "conv3", parts, True, name))
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool3")(x)
    x = keras.layers.Flatten()(x)
    return keras.layers.Dense(64, name="embedding", **_args(parts, name, "embedding"))(x)


@registry.register_network("cifar10_full_sigmoid_bn", family="cifar", made_for=INPUT,
                           check=check, classifier_std=0.01)
def full_sigmoid_bn(inputs, settings, parts):
    """Caffe's BN example, examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt:
    conv 32 5x5 (no bias), max pool 3/2, BN, sigmoid; conv 32 5x5, BN, sigmoid, avg pool 3/2;
    conv 64 5x5, BN, sigmoid, avg pool 3/2; ip classes. The BN layers (learned scale and
    shift, as at the pinned commit) are the settings' norm."""
    name = "cifar10_full_sigmoid_bn"
    x = keras.layers.Conv2D(32, 5, padding="same", use_bias=False, name="conv1",
                            **_args(parts, name, "conv1"))(inputs)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = keras.layers.Activation("sigmoid", name="sigmoid1")(parts.norm("conv1_bn")(x))
    x = keras.layers.Activation("sigmoid", name="sigmoid2")(
        _conv(x, 32, "conv2", parts, False, name))
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool2")(x)
    x = keras.layers.Activation("sigmoid", name="sigmoid3")(
        _conv(x, 64, "conv3", parts, False, name))
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool3")(x)
    return keras.layers.Flatten(name="embedding")(x)
