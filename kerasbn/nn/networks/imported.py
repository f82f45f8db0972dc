"""An imported network (`python -m kerasbn.caffe_import` or `torch_import`) as the backbone of
a kerasbn network: its layers from the photo's pixels to its embedding, under kerasbn's heads.
Its BN layers are kerasbn's Caffe norms (bvlc, windows, nvidia) or PyTorch's (torch), so they
train on with their own semantics and statistics."""

import os

import keras

from kerasbn.nn import caffe_layers, grouped_conv, norms  # noqa: F401 (they deserialize it)

# The Keras model file an import writes into its export.
FILE = "model.keras"


def check(path, image_size, channels):
    """Why the export at `path` cannot be the backbone of `image_size` x `channels` images,
    or None."""
    model_file = os.path.join(path, FILE)
    if not os.path.isfile(model_file):
        return (f"--backbone={path} holds no {FILE}; give an export written by "
                "python -m kerasbn.caffe_import or kerasbn.torch_import")
    size = tuple(keras.saving.load_model(model_file).input.shape[1:])
    if size != (*image_size, channels):
        return (f"--backbone={path} takes {size[0]}x{size[1]}x{size[2]} images but the dataset "
                f"holds {image_size[0]}x{image_size[1]}x{channels}; build the dataset at the "
                "network's size")
    return None


def backbone(path, image_size, channels, input_norm):
    """(image input, embedding tensor) of the import at `path`, fed kerasbn's images
    normalised by the dataset's (mean, std) `input_norm`: they are made the pixels again
    (the imported network preprocesses them as Caffe did)."""
    imported = keras.saving.load_model(os.path.join(path, FILE))
    body = keras.Model(imported.input, imported.get_layer("embedding").output,
                       name="backbone")
    mean, std = input_norm
    inputs = keras.Input((*image_size, channels), name="image")
    pixels = keras.layers.Rescaling(list(std), list(mean), name="pixels")(inputs)
    return inputs, keras.layers.Identity(name="embedding")(body(pixels))
