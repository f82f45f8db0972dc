"""An imported Caffe network made servable: the network from an RGB image's pixels (0-255),
through Caffe's preprocessing (channel order, mean, scale), to its logits, with a layer
`embedding`; and the manifest its export records (size, channels, class names)."""

import keras

from kerasbn.caffe import network, proto
from kerasbn.data.manifest import Manifest
from kerasbn.nn import caffe_layers


def embedding_source(planned, embedding_layer=None, classifier=False):
    """(the layer whose output is the embedding, the logits blob or None) of a network
    (`network.plan`'s) with one output: a final Softmax's input is the logits, and the input
    of the fully connected layer giving them the embedding; without a Softmax (and without
    `classifier`) the output is the embedding and there are no logits. `embedding_layer`
    names the layer instead."""
    [end] = planned.ends
    last = next(layer for layer, _ in reversed(planned.steps) if end in layer.top)
    logits = last.bottom[0] if last.type == "Softmax" else end if classifier else None
    if embedding_layer:
        if embedding_layer not in planned.sources:
            known = ", ".join(list(planned.sources)[-8:])
            raise network.CaffeError(f"--embedding_layer={embedding_layer}: no such layer; "
                                     f"the last layers are {known}")
        return embedding_layer, logits
    if logits is None:
        return last.name, None
    giving = planned.sources[last.name][0] if last.type == "Softmax" else last.name
    kind = next(layer.type for layer, _ in planned.steps if layer.name == giving)
    return (planned.sources[giving][0] if kind == "InnerProduct" else giving), logits


def build(prototxt, caffemodel, input_size=None, channel_order="bgr", mean=(0.0,), scale=1.0,
          embedding_layer=None, class_names=None):
    """(Keras model in kerasbn's form: input `image` (RGB pixels, 0-255), a layer
    `embedding`, logits out (the embedding where the network has no classifier); its
    Manifest) of a deploy prototxt and caffemodel. `channel_order`, `mean` (one value or one
    per channel, in the network's channel order) and `scale` are Caffe's preprocessing,
    (x - mean) * scale; `class_names` the classifier's names (default "class 0", ...)."""
    weights = network.weights_of(proto.read_caffemodel(caffemodel))
    planned = network.plan(proto.read_prototxt(prototxt), input_size)
    if len(planned.ends) != 1:
        raise network.CaffeError(f"the network has {len(planned.ends)} outputs "
                                 f"({', '.join(planned.ends)}); kerasbn imports networks of "
                                 "one output")
    channels = planned.input[1][0]
    if len(mean) not in (1, channels):
        raise network.CaffeError(f"--mean takes one value or {channels} (one per channel), "
                                 f"got {len(mean)}")
    source, logits = embedding_source(planned, embedding_layer, class_names is not None)
    preprocess = caffe_layers.CaffeInput(channel_order == "bgr", mean, scale,
                                         name="caffe_input")
    built = network.build(planned, weights, preprocess, embedding=source)
    embedding = built.model.get_layer("embedding").output
    if len(embedding.shape) != 2:
        raise network.CaffeError(f"the embedding ({source}'s output) must be a vector per "
                                 f"image, not of shape {tuple(embedding.shape[1:])}; name a "
                                 "fully connected layer with --embedding_layer")
    out = built.blobs[logits] if logits else embedding
    model = keras.Model(built.model.input, out, name=planned.name)
    classes = int(out.shape[-1]) if logits else 0
    if class_names is not None and len(class_names) != classes:
        raise network.CaffeError(f"--class_names lists {len(class_names)} names; the "
                                 f"network's classifier has {classes} classes")
    height, width = model.input.shape[1:3]
    # The network preprocesses its pixels itself, so the export passes them unchanged.
    manifest = Manifest(
        image_size=(height, width), channels=channels, encoding="raw",
        class_names=tuple(class_names or (f"class {i}" for i in range(classes))), splits={},
        mean=(0.0,) * channels, std=(1.0,) * channels, resize_mode="stretch")
    return model, manifest
