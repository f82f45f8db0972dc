"""How separable a dataset's identities are: a linear classifier's and a small CNN's test top-1
(`bench --bench=separability`), so a synthetic set is neither trivial nor hopeless."""

import keras
import numpy as np

from kerasbn.data import pipeline, records


def _load_split(data_dir, manifest, split):
    images, labels = [], []
    for x, y in pipeline.test_dataset(data_dir, manifest, 1024, split=split):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _small_cnn(input_shape, num_classes):
    x = inputs = keras.Input(input_shape)
    for width in (32, 64, 96):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(x))
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="small_cnn")


def _linear(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    logits = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, logits, name="linear")


def separability(data_dir, epochs, batch_size=64, seed=0):
    """Test top-1 of a linear classifier on pixels and of a small CNN, same data and budget.

    A dataset worth training face networks on must leave the linear model clearly behind.
    """
    manifest = records.read_manifest(data_dir)
    x_train, y_train = _load_split(data_dir, manifest, "train")
    x_test, y_test = _load_split(data_dir, manifest, "test")
    num_classes = manifest.num_classes
    result = {}
    for build in (_linear, _small_cnn):
        keras.utils.set_random_seed(seed)
        model = build(x_train.shape[1:], num_classes)
        model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0)
        result[model.name] = float(model.evaluate(x_test, y_test, verbose=0)[1])
    return result
