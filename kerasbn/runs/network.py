"""The compiled network of a `RunConfig`: the network of its model and head, its loss (the
margin in the loss only, so inference sees plain logits) and its Caffe-style solver, as
training, export and evaluation all rebuild it."""

import warnings

import keras
import tensorflow as tf

from kerasbn.config import ConfigError
from kerasbn.nn import models, partial_fc, registry
from kerasbn.nn.heads import margins
from kerasbn.nn.sharded import centres, training
from kerasbn.optim.optimizers import make_optimizer


def make_loss(config):
    """The training loss of the run's head: softmax cross entropy, with its margin."""
    return registry.HEADS[config.head].loss(config)


def build_network(config):
    """The network of `config`, as `SampledTraining` when its head samples centres, as
    `ShardedTraining` with `--shard_classes` (its shards over the current strategy's
    replicas)."""
    if config.shard_classes:
        return _sharded_network(config)
    model = models.build_from(config.network())
    if config.sample_classes == 1:
        return model
    count = partial_fc.sample_count(config.num_classes, config.sample_classes)
    return partial_fc.SampledTraining(model.input, model.output, count, config.seed,
                                      name=model.name)


def _sharded_network(config):
    scale = margins.resolved(config.head, config.scale)[0]
    layer = lambda units, settings, kernel, bias: training.ShardedClassifier(
        units, scale, seed=config.seed, momentum=config.momentum > 0, name=registry.CLASSIFIER)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if config.num_classes < replicas:
        raise ConfigError(f"--shard_classes: {config.num_classes} classes cannot be sharded "
                          f"over {replicas} replicas; train on at most {config.num_classes}")
    model = models.build_from(config.network(), classifier=layer)
    rows = centres.shard_rows(config.num_classes, replicas)
    take = partial_fc.sample_count(rows, config.sample_classes)
    if take < min(rows, config.batch_size):
        raise ConfigError(
            f"--sample_classes={config.sample_classes:g} draws {take} of the {rows} centres of "
            f"each of {replicas} shards, fewer than the {config.batch_size} identities a global "
            "batch may hold in one shard; raise it to at least "
            f"{partial_fc.least_fraction(config.batch_size, rows):g}")
    return training.ShardedTraining(model.input, model.output, take, name=model.name)


def servable(config, model):
    """`model` as exports and evaluation take it: a `--shard_classes` network becomes the
    same network with its whole classifier (the shards' rows in one `CosineClassifier`)."""
    if not isinstance(model, training.ShardedTraining):
        return model
    whole = models.build_from(config.network())
    for layer in whole.layers:
        if layer.name == registry.CLASSIFIER:
            layer.kernel.assign(model.get_layer(registry.CLASSIFIER).shards.whole())
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return whole


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
