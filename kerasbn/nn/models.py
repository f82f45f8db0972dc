"""The study's networks (REFERENCE.md section 1), built by name.

`baseline`: the CASIA-WebFace net less one block; `bn`: the study's BN network (BN after the
first convolution of each block, block 2's conv 64 removed, no dropout); `bn_all`: the same
with BN after every convolution. All convolutions 3x3 "same"; 2x2 max pools rounding up like
Caffe (50 -> 25 -> 13 -> 7); a global average pool gives the 320-d layer `embedding`
(`embedding="pool"`), or, with `embedding="bn_fc"`, feeds insightface's neck: BN, dropout, a
fully connected layer to `embedding_dim` and BN, the last named `embedding`. The classifier
`logits` is the study's softmax (a Dense layer) or a margin head's `heads.CosineClassifier`;
logits are float32 under mixed precision.

`cifar10_quick` and `cifar10_full_sigmoid_bn` are Caffe's CIFAR-10 examples, the nets the
study's side study compared BN implementations on, as their prototxts define them at BVLC/caffe
commit ad248bd3a2102b82bfe7f1603134ee87d759d88d (the BN example changed between commits;
later ones drop its learned scale and shift), per-layer Gaussian fillers included.

Weight fillers (`weight_filler`) follow Caffe's definitions: `xavier` uniform on
±sqrt(3 / fan_in), `msra` an untruncated Gaussian of std sqrt(2 / fan_in) (Keras's he_normal
truncates), `gaussian` N(0, filler_std); `keras` Keras's glorot_uniform; `network` (the
default) each network's own: he_normal convolutions for the face networks, the prototxts'
per-layer Gaussians for the CIFAR-10 ones. Biases start at 0, as Caffe's constant filler.
"""

import keras

from kerasbn.nn import heads, imported, iresnet, mobilefacenet, norms

# The last layer's name: fine-tuning replaces it, the rest is the backbone.
CLASSIFIER = heads.CLASSIFIER
# Each block: (convolution widths, whether each convolution is followed by BN).

BLOCKS = {
    "baseline": [((32, 64), (False, False)), ((64, 128), (False, False)),
                 ((96, 192), (False, False)), ((160, 320), (False, False))],
    "bn": [((32, 64), (True, False)), ((128,), (True,)),
           ((96, 192), (True, False)), ((160, 320), (True, False))],
    "bn_all": [((32, 64), (True, True)), ((128,), (True,)),
               ((96, 192), (True, True)), ((160, 320), (True, True))],
}
# The field's networks at 112x112: insightface's IResNets and MobileFaceNet.
FIELD_MODELS = tuple(iresnet.LAYERS) + ("mobilefacenet",)
DEFAULT_DROPOUT = {"baseline": 0.4, "bn": 0.0, "bn_all": 0.0,
                   **{name: 0.0 for name in FIELD_MODELS}}
CIFAR_MODELS = ("cifar10_quick", "cifar10_full_sigmoid_bn")
MODELS = tuple(BLOCKS) + FIELD_MODELS + CIFAR_MODELS
FILLERS = ("network", "keras", "xavier", "msra", "gaussian")
# The prototxts' weight filler stds, per layer.
_CIFAR_STDS = {
    "cifar10_quick": {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "embedding": 0.1,
                      CLASSIFIER: 0.1},
    "cifar10_full_sigmoid_bn": {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01,
                                CLASSIFIER: 0.01},
}


def initializer(filler, filler_std=0.01, own="glorot_uniform"):
    """The Keras initializer of Caffe weight filler `filler` (`own`: the network's own)."""
    if filler == "network":
        return own
    if filler == "keras":
        return "glorot_uniform"
    if filler == "xavier":
        return keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")
    if filler == "msra":
        return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")
    if filler == "gaussian":
        return keras.initializers.RandomNormal(stddev=filler_std)
    raise ValueError(f"unknown --weight_filler {filler!r}; choose one of {', '.join(FILLERS)}")


def made_for(name):
    """`build`'s keyword arguments for the input (and embedding) network `name` is made for:
    the field's 112x112 RGB with insightface's 512-d embedding, the CIFAR-10 nets' 32x32 RGB,
    the study's 50x50 gray."""
    if name in FIELD_MODELS:
        return {"image_size": (112, 112), "channels": 3, "embedding_dim": 512}
    if name in CIFAR_MODELS:
        return {"image_size": (32, 32), "channels": 3}
    return {"image_size": (50, 50), "channels": 1}


def default_widths(name):
    """The convolution widths of network `name`, in order: the study's nets' every
    convolution, IResNet's stem and stages ([] for CIFAR-10 nets)."""
    if name in iresnet.LAYERS:
        return list(iresnet.WIDTHS)
    if name == "mobilefacenet":
        return list(mobilefacenet.WIDTHS)
    return [w for widths, _ in BLOCKS.get(name, []) for w in widths]


def build(name, num_classes, image_size=(50, 50), channels=1, widths=None, dropout=None,
          norm="keras", bn_momentum=None, bn_epsilon=None, weight_decay=0.0,
          bias_decay_mult=0.0, bn_decay_mult=0.0, weight_filler="network", filler_std=0.01,
          head="softmax", scale=None, embedding="pool", embedding_dim=128,
          decay_centres=True, backbone=None, input_norm=()):
    """Builds network `name` taking normalised float images [N, H, W, channels] to logits.

    `weight_decay` is Caffe's: an L2 penalty of weight_decay / 2 on every kernel, times
    `bias_decay_mult` on biases and `bn_decay_mult` on BN's scale and shift (Caffe's
    decay_mult; a Caffe Scale layer's is 1). `dropout=None` takes the network's default.
    `head`: `softmax` or a margin head (`cosface`, `arcface`: a `heads.CosineClassifier` of
    `scale`, default the head's); `decay_centres=False` leaves its centres without the L2
    term (Partial FC decays the rows it draws in the optimizer instead). `backbone`: an
    imported network's export (nn/imported), fed images normalised by `input_norm`, instead
    of network `name`.
    """
    if name not in MODELS:
        raise ValueError(f"unknown --model {name!r}; choose one of {', '.join(MODELS)}")
    if head not in heads.HEADS or embedding not in heads.EMBEDDINGS:
        raise ValueError(f"unknown --head {head!r} or --embedding {embedding!r}; choose from "
                         f"{', '.join(heads.HEADS)} and {', '.join(heads.EMBEDDINGS)}")
    l2 = lambda mult: keras.regularizers.L2(weight_decay * mult / 2) \
        if weight_decay and mult else None
    regularizer, bias_regularizer = l2(1.0), l2(bias_decay_mult)
    norm_layer = lambda n: norms.make_norm(norm, bn_momentum, bn_epsilon, name_prefix=n,
                                           regularizer=l2(bn_decay_mult))
    if backbone:
        inputs, x = imported.backbone(backbone, image_size, channels, input_norm)
        return _with_classifier(inputs, x, "imported", num_classes, head, scale, decay_centres,
                                weight_filler, filler_std, regularizer, bias_regularizer)
    if name in CIFAR_MODELS:
        if head != "softmax" or embedding != "pool":
            raise ValueError(f"--head and --embedding apply to the face networks, not {name}")
        build_cifar = cifar10_quick if name == "cifar10_quick" else cifar10_full_sigmoid_bn
        stds = _CIFAR_STDS[name]
        layer_args = lambda layer: {
            "kernel_regularizer": regularizer, "bias_regularizer": bias_regularizer,
            "kernel_initializer": initializer(
                weight_filler, filler_std, keras.initializers.RandomNormal(stddev=stds[layer]))}
        return build_cifar(num_classes, image_size, channels, norm_layer, layer_args)
    widths = list(widths or default_widths(name))
    if len(widths) != len(default_widths(name)):
        raise ValueError(f"--widths for {name} takes {len(default_widths(name))} values, "
                         f"got {len(widths)}")
    dropout = DEFAULT_DROPOUT[name] if dropout is None else dropout
    inputs = keras.Input((*image_size, channels), name="image")
    if name in FIELD_MODELS:
        if embedding != "pool" or any(side % iresnet.STRIDE for side in image_size):
            raise ValueError(f"{name} has insightface's neck built in (no --embedding) and "
                             f"takes images whose sides are multiples of {iresnet.STRIDE}")
        conv_args = {"kernel_initializer": initializer(weight_filler, filler_std, "he_normal"),
                     "kernel_regularizer": regularizer}
        dense_args = {"kernel_initializer": initializer(weight_filler, filler_std),
                      "kernel_regularizer": regularizer}
        x = mobilefacenet.backbone(inputs, widths, embedding_dim, norm_layer, conv_args,
                                   dense_args) if name == "mobilefacenet" else \
            iresnet.backbone(name, inputs, widths, dropout, embedding_dim, norm_layer,
                             conv_args, {**dense_args, "bias_regularizer": bias_regularizer})
        return _with_classifier(inputs, x, name, num_classes, head, scale, decay_centres,
                                weight_filler, filler_std, regularizer, bias_regularizer)
    x = inputs
    width_iter = iter(widths)
    for block, (convs, with_bn) in enumerate(BLOCKS[name], start=1):
        for index, has_bn in enumerate(with_bn, start=1):
            layer = f"conv{block}_{index}"
            x = keras.layers.Conv2D(next(width_iter), 3, padding="same", use_bias=not has_bn,
                                    kernel_initializer=initializer(weight_filler, filler_std,
                                                                   "he_normal"),
                                    kernel_regularizer=regularizer,
                                    bias_regularizer=bias_regularizer, name=layer)(x)
            if has_bn:
                x = norm_layer(f"{layer}_bn")(x)
            x = keras.layers.ReLU(name=f"{layer}_relu")(x)
        if block < len(BLOCKS[name]):
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{block}")(x)
    if embedding == "pool":
        x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="dropout")(x)
    else:
        x = norm_layer("pool_bn")(keras.layers.GlobalAveragePooling2D(name="pool")(x))
        if dropout:
            x = keras.layers.Dropout(dropout, name="dropout")(x)
        x = keras.layers.Dense(embedding_dim, kernel_regularizer=regularizer,
                               bias_regularizer=bias_regularizer, name="embedding_fc",
                               kernel_initializer=initializer(weight_filler, filler_std))(x)
        x = norm_layer("embedding")(x)
    return _with_classifier(inputs, x, name, num_classes, head, scale, decay_centres,
                            weight_filler, filler_std, regularizer, bias_regularizer)


def _with_classifier(inputs, x, name, num_classes, head, scale, decay_centres, weight_filler,
                     filler_std, regularizer, bias_regularizer):
    """The network from `inputs` to the logits of `head` on the embedding `x`."""
    kernel = {"kernel_initializer": initializer(weight_filler, filler_std),
              "kernel_regularizer": regularizer, "dtype": "float32", "name": CLASSIFIER}
    if head == "softmax":
        logits = keras.layers.Dense(num_classes, bias_regularizer=bias_regularizer,
                                    **kernel)(x)
    else:
        if not decay_centres:
            kernel["kernel_regularizer"] = None
        logits = heads.CosineClassifier(num_classes, heads.resolved(head, scale)[0],
                                        **kernel)(x)
    return keras.Model(inputs, logits, name=name)


def _cifar_conv(x, filters, name, norm_layer, use_bias, layer_args):
    x = keras.layers.Conv2D(filters, 5, padding="same", use_bias=use_bias, name=name,
                            **layer_args(name))(x)
    return norm_layer(f"{name}_bn")(x)


def _identity(name):
    return keras.layers.Identity(name=name)


def _no_args(name):
    return {}


def cifar10_quick(num_classes=10, image_size=(32, 32), channels=3, norm_layer=None,
                  layer_args=None):
    """Caffe's examples/cifar10/cifar10_quick_train_test.prototxt, with a norm after each conv:
    conv 32 5x5, max pool 3/2, ReLU; conv 32 5x5, ReLU, avg pool 3/2; conv 64 5x5, ReLU,
    avg pool 3/2; ip 64; ip classes. Pools round up as Caffe's (32 -> 16 -> 8 -> 4).
    `layer_args(name)`: the keyword arguments of layer `name` (fillers, regularizers)."""
    norm_layer, layer_args = norm_layer or _identity, layer_args or _no_args
    x = inputs = keras.Input((*image_size, channels), name="image")
    x = _cifar_conv(x, 32, "conv1", norm_layer, True, layer_args)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.ReLU(name="relu2")(_cifar_conv(x, 32, "conv2", norm_layer, True,
                                                    layer_args))
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool2")(x)
    x = keras.layers.ReLU(name="relu3")(_cifar_conv(x, 64, "conv3", norm_layer, True,
                                                    layer_args))
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool3")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, name="embedding", **layer_args("embedding"))(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name=CLASSIFIER,
                                **layer_args(CLASSIFIER))(x)
    return keras.Model(inputs, logits, name="cifar10_quick")


def cifar10_full_sigmoid_bn(num_classes=10, image_size=(32, 32), channels=3, norm_layer=None,
                            layer_args=None):
    """Caffe's BN example, examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt:
    conv 32 5x5 (no bias), max pool 3/2, BN, sigmoid; conv 32 5x5, BN, sigmoid, avg pool 3/2;
    conv 64 5x5, BN, sigmoid, avg pool 3/2; ip classes. The BN layers (learned scale and
    shift, as at the pinned commit) are `norm_layer`."""
    norm_layer, layer_args = norm_layer or _identity, layer_args or _no_args
    x = inputs = keras.Input((*image_size, channels), name="image")
    x = keras.layers.Conv2D(32, 5, padding="same", use_bias=False, name="conv1",
                            **layer_args("conv1"))(x)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = keras.layers.Activation("sigmoid", name="sigmoid1")(norm_layer("conv1_bn")(x))
    x = keras.layers.Activation("sigmoid", name="sigmoid2")(
        _cifar_conv(x, 32, "conv2", norm_layer, False, layer_args))
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool2")(x)
    x = keras.layers.Activation("sigmoid", name="sigmoid3")(
        _cifar_conv(x, 64, "conv3", norm_layer, False, layer_args))
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool3")(x)
    x = keras.layers.Flatten(name="embedding")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name=CLASSIFIER,
                                **layer_args(CLASSIFIER))(x)
    return keras.Model(inputs, logits, name="cifar10_full_sigmoid_bn")
