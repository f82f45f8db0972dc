"""Where kerasbn reaches past Keras's public API, each with the reason and the version it was
checked against (Keras 3.15, TensorFlow 2.21): one place to look when either changes."""

import keras
import tensorflow as tf

from kerasbn.nn import models


def num_workers(strategy):
    """The worker count of a multi-worker strategy: TensorFlow 2.21 has no public count."""
    return strategy.extended._num_workers  # noqa: SLF001


def replicated_fit(model, strategy, batches, steps, events):
    """`model.fit` for a multi-worker strategy: Keras 3.15's fit fails under
    MultiWorkerMirroredStrategy (BUILD.md says why), so this runs Keras's own train_step on
    every replica through strategy.run and calls the same callbacks fit would, batch by
    batch, so every iteration event (test, display, snapshot, targets, NaN guard) is the
    same."""
    if getattr(model, "_replicated_step", None) is None:
        @tf.function
        def step(iterator):
            logs = strategy.run(model.train_step, args=(next(iterator),))
            return {name: strategy.reduce("MEAN", value, axis=None)
                    for name, value in logs.items()}
        model._replicated_step = step
    events = keras.callbacks.CallbackList(events, model=model)
    model.stop_training = False
    events.on_train_begin()
    for batch in range(steps):
        events.on_train_batch_begin(batch)
        logs = model._replicated_step(batches)
        events.on_train_batch_end(batch, {name: float(v) for name, v in logs.items()})
        if model.stop_training:
            break
    events.on_train_end()


def set_steps_per_execution(model, steps):
    """Keras's steps_per_execution of the compiled `model`. The train function of each count
    is kept (until freeze_backbone changes what trains), so a catch-up after a skipped update
    and the return to N reuse their traces instead of tracing again."""
    if model.steps_per_execution == steps:
        return
    functions = model.__dict__.setdefault("_train_functions", {})
    functions[model.steps_per_execution] = model.train_function
    model.steps_per_execution = steps
    model.train_function = functions.get(steps)
    if model.train_function is None:
        model.make_train_function()


def freeze_backbone(model, frozen):
    """Trains only the classifier (`frozen`) or every layer. Frozen BN layers use their
    moving statistics, as Keras does for any BN layer that is not trainable."""
    if all(layer.trainable != frozen for layer in model.layers
           if layer.name != models.CLASSIFIER):
        return
    for layer in model.layers:
        if layer.name != models.CLASSIFIER:
            layer.trainable = not frozen
    model.make_train_function(force=True)
    model._replicated_step = None
    model.__dict__.pop("_train_functions", None)


def compute_loss(model, x, y, y_pred):
    """The compiled loss of `model` as Keras's own train_step computes it (Model._compute_loss:
    the loss with its regularization terms, `training` passed on), for a train_step of ours
    (Partial FC) whose logits are not the model's outputs."""
    return model._compute_loss(x=x, y=y, y_pred=y_pred, training=True)  # noqa: SLF001


def track_loss(model, loss, batch):
    """Adds a step's loss to the `loss` that fit reports, as Keras's train_step does
    (Model._loss_tracker). Under a strategy the loss is divided by the replica count to sum
    over replicas, so it is scaled back to the batch's mean first."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    model._loss_tracker.update_state(loss * replicas, sample_weight=batch)  # noqa: SLF001
