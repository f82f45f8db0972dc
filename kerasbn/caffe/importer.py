"""An imported Caffe network made servable: the network from an RGB image's pixels (0-255),
through Caffe's preprocessing (channel order, mean, scale), to its logits, with a layer
`embedding`; a network of several outputs (MTCNN's classifier and regressors) keeps them all,
after those, each marked by a `CaffeOutput` layer; and the manifest its export records (size,
channels, class names)."""

import dataclasses

import keras

from kerasbn.caffe import network, proto
from kerasbn.data.manifest import Manifest
from kerasbn.nn import caffe_layers


def embedding_source(planned, embedding_layer=None, classifier=False):
    """(the layer whose output is the embedding, the logits blob or None) of a network
    (`network.plan`'s) with one output: a final Softmax's input is the logits, and the input
    of the fully connected layer giving them the embedding; without a Softmax (and without
    `classifier`) the output is the embedding and there are no logits. `embedding_layer`
    names the layer instead, as it must for a network of several outputs (which then has no
    logits)."""
    if len(planned.ends) > 1 and not embedding_layer:
        raise network.CaffeError(
            f"the network has {len(planned.ends)} outputs ({', '.join(planned.ends)}); name "
            "the layer whose output the face signatures embed with --embedding_layer (every "
            "output is kept, in model.keras and the export's serving_raw)")
    end = planned.ends[0]
    last = next(layer for layer, _ in reversed(planned.steps) if end in layer.top)
    logits = last.bottom[0] if last.type == "Softmax" else end if classifier else None
    if len(planned.ends) > 1:
        logits = None
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


@dataclasses.dataclass(frozen=True)
class Imported:
    """`build`'s result: the Keras `model`, its `manifest`, and `caffe_names` ({Keras layer
    name: Caffe layer name} of the layers Keras could not take by their Caffe name)."""

    model: keras.Model
    manifest: Manifest
    caffe_names: dict


def build(prototxt, caffemodel, input_size=None, channel_order="bgr", mean=(0.0,), scale=1.0,
          embedding_layer=None, class_names=None):
    """The `Imported` network of a deploy prototxt and caffemodel, in kerasbn's form: input
    `image` (RGB pixels, 0-255), a layer `embedding`, logits out (the embedding where the
    network has no classifier), then each output of a network of several. `channel_order`,
    `mean` (one value or one per channel, in the network's channel order) and `scale` are
    Caffe's preprocessing, (x - mean) * scale; `class_names` the classifier's names (default
    "class 0", ...)."""
    weights = network.weights_of(proto.read_caffemodel(caffemodel))
    planned = network.plan(proto.read_prototxt(prototxt), input_size)
    channels = planned.input[1][0]
    if channels not in (1, 3):
        raise network.CaffeError(f"input {planned.input[0]!r} takes {channels} channels; "
                                 "kerasbn feeds networks photos, which have 1 (gray) or 3 "
                                 "(color)")
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
    raw = [] if len(planned.ends) == 1 else [
        caffe_layers.CaffeOutput(end, name=f"{key}>output")(built.blobs[end])
        for end, key in network.keras_names(planned.ends).items()]
    model = keras.Model(built.model.input, [out, *raw] if raw else out, name=planned.name)
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
    renamed = {layer.keras: layer.name for layer, _ in planned.steps if layer.keras != layer.name}
    return Imported(model, manifest, renamed)
