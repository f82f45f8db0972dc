"""The compiled network of a `RunConfig`: the network of its model and head, its loss (the
margin in the loss only, so inference sees plain logits) and its Caffe-style solver, as
training, export and evaluation all rebuild it."""

import warnings

import keras

from kerasbn.config import ConfigError
from kerasbn.nn import models, partial_fc, registry
from kerasbn.optim.optimizers import make_optimizer


def make_loss(config):
    """The training loss of the run's head: softmax cross entropy, with its margin."""
    return registry.HEADS[config.head].loss(config)


def build_network(config):
    """The network of `config`, as `SampledTraining` when its head samples centres."""
    model = models.build_from(config.network())
    if config.sample_classes == 1:
        return model
    count = partial_fc.sample_count(config.num_classes, config.sample_classes)
    return partial_fc.SampledTraining(model.input, model.output, count, config.seed,
                                      name=model.name)


def build_and_compile(config):
    """The compiled network of `config`, its optimizer variables already created (so a
    checkpoint can restore into them)."""
    model = build_network(config)
    optimizer = make_optimizer(config)
    if config.precision == "mixed_float16":
        # The name Keras gives the wrapper it would add itself, so checkpoints stay readable.
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer, initial_scale=config.initial_loss_scale, name="loss_scale_optimizer")
    with warnings.catch_warnings():
        # Keras warns and trains without XLA where it cannot compile; that is an error here.
        warnings.simplefilter("ignore", UserWarning)
        model.compile(optimizer, make_loss(config),
                      steps_per_execution=config.steps_per_execution * config.iter_size,
                      jit_compile=config.jit_compile)
    if config.jit_compile and not model.jit_compile:
        raise ConfigError(f"--jit_compile: Keras cannot compile --model={config.model} "
                          f"--norm={config.norm} with XLA (a layer does not support it, or op "
                          "determinism is on); train without --jit_compile")
    model.optimizer.build(model.trainable_variables)
    return model
