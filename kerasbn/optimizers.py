"""The network and its Caffe-style solver, built from a `RunConfig`, as train, export and
evaluation all need them.

Caffe's update for SGD is v = momentum * v + lr * (grad + wd * w); w -= v. Keras's SGD keeps
m = -v and applies the same update; the wd * w term comes from an L2 regularizer of wd / 2 on
the kernels (models.build). Nesterov is Keras's nesterov=True, the same update as Caffe's.
Caffe's iter_size is Keras's gradient_accumulation_steps (schedules count updates).
"""

import keras

from kerasbn import models, schedules


def make_optimizer(config):
    """The optimizer of `config.solver_type` on the config's learning-rate schedule."""
    schedule = schedules.make_schedule(config.schedule)
    accumulate = {"gradient_accumulation_steps": config.iter_size} \
        if config.iter_size > 1 else {}
    kind = config.solver_type
    if kind in ("SGD", "Nesterov"):
        return keras.optimizers.SGD(schedule, momentum=config.momentum,
                                    nesterov=kind == "Nesterov", **accumulate)
    if kind == "Adam":
        return keras.optimizers.Adam(schedule, beta_1=config.momentum,
                                     beta_2=config.momentum2, epsilon=config.delta,
                                     **accumulate)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay,
                                       beta_1=config.momentum, beta_2=config.momentum2,
                                       epsilon=config.delta, **accumulate)
    excluded = ["gamma", "beta"] + ([] if config.decay_biases else ["bias"])
    optimizer.exclude_from_weight_decay(var_names=excluded)
    return optimizer


def build_and_compile(config):
    """The compiled network of `config`, its optimizer variables already created (so a
    checkpoint can restore into them)."""
    model = models.build(**config.model_kwargs())
    model.compile(make_optimizer(config),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    return model
