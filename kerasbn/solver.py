"""The network and its Caffe-style solver (SGD with momentum, lr policy of the iteration),
built from a run config, as train, export and evaluation all need them."""

import keras

from kerasbn import models, schedules
from kerasbn import flags as train_flags


def build_and_compile(config):
    """The compiled network of `config`, its optimizer variables already created (so a
    checkpoint can restore into them)."""
    model = models.build(**train_flags.model_kwargs(config))
    schedule = schedules.make_schedule(config["lr_policy"], config["base_lr"],
                                       config["stepvalue"], config["gamma"])
    optimizer = keras.optimizers.SGD(schedule, momentum=config["momentum"])
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    return model
