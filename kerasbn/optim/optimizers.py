"""The Caffe-style solver of a `RunConfig` (`kerasbn.runs.network` compiles the network
with it).

Caffe's update for SGD is v = momentum * v + lr * (grad + wd * w); w -= v. Keras's SGD keeps
m = -v and applies the same update; the wd * w term comes from an L2 regularizer of wd / 2 on
the kernels (models.build). Nesterov is Keras's nesterov=True, the same update as Caffe's.
Caffe's iter_size is Keras's gradient_accumulation_steps (schedules count updates).
A bias lr_mult (Caffe prototxts commonly give biases 2) scales the rate of the variables
named `bias` in `CaffeSGD`'s update; Caffe applies it to the whole step, decay term included,
which the L2 regularizer's gradient is part of here.
A gradient of some rows only (`tf.IndexedSlices`: Partial FC's drawn centres) updates those
rows alone, their momentum and a weight decay of `row_decay` included, so the rows not drawn
keep their values and momentum, as insightface's first Partial FC kept them; with
`every_row`, it is made dense (zero for the rows not drawn) and every row takes the update,
decay and momentum included, as insightface's PartialFC_V2 does.

With `torch_momentum` the rate stays outside the momentum buffer, as `torch.optim.SGD` (and
so arcface_torch) keeps it: buf = momentum * buf + (grad + wd * w); w -= lr * buf. The two
agree while the rate is constant and part when it changes (a warm-up, a decay).
`backbone_clipnorm` clips the global L2 norm of every gradient but the classifier's, as
arcface_torch's train_v2.py clips the backbone's (clip_grad_norm_(backbone.parameters(), 5)):
after gradient accumulation and loss scaling, torch's rule max_norm / (norm + 1e-6), at most 1.
"""

import keras
import tensorflow as tf

from kerasbn.nn import registry
from kerasbn.optim import schedules


def is_head(variable):
    """Whether `variable` is the classifier's (the margin head's centres), not the
    backbone's."""
    return registry.CLASSIFIER in variable.path.split("/")[:-1]


class BackboneClipping:
    """Clips the backbone's gradients to the global norm `backbone_clipnorm` (0: not at all)
    in a Keras optimizer it is mixed into. Adam and AdamW take a gradient of some rows
    (Partial FC's) as the dense gradient it is, zero on the rows not drawn, as PartialFC_V2's
    optimizer sees it."""

    def __init__(self, learning_rate, backbone_clipnorm=0.0, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.backbone_clipnorm = float(backbone_clipnorm)

    def _backend_apply_gradients(self, grads, trainable_variables):
        self._heads = [is_head(v) for v in trainable_variables]
        return super()._backend_apply_gradients(grads, trainable_variables)

    def _clip_gradients(self, grads):
        grads = super()._clip_gradients(grads)
        if not self.backbone_clipnorm:
            return grads
        backbone = [g for g, head in zip(grads, self._heads) if g is not None and not head]
        norm = tf.linalg.global_norm(backbone)
        factor = tf.minimum(1.0, self.backbone_clipnorm / (norm + 1e-6))
        return [g if g is None or head else g * tf.cast(factor, g.dtype)
                for g, head in zip(grads, self._heads)]

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "backbone_clipnorm": self.backbone_clipnorm}


@keras.saving.register_keras_serializable(package="kerasbn")
class CaffeSGD(BackboneClipping, keras.optimizers.SGD):
    """Keras's SGD (momentum, Nesterov) with Caffe's lr_mult on biases; with
    `torch_momentum`, torch.optim.SGD's buffer instead of Caffe's."""

    def __init__(self, learning_rate=0.01, bias_lr_mult=1.0, row_decay=0.0, every_row=False,
                 torch_momentum=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.bias_lr_mult = float(bias_lr_mult)
        self.row_decay = float(row_decay)
        self.every_row = bool(every_row)
        self.torch_momentum = bool(torch_momentum)

    def build(self, variables):
        super().build(variables)
        # The backend hands update_step its own variables (a tf.Variable named
        # ".../bias:0" under TensorFlow), so biases are recognised by key.
        self._biases = {self._var_key(v) for v in variables if v.name == "bias"}

    def update_step(self, gradient, variable, learning_rate):
        if self.bias_lr_mult != 1 and self._var_key(variable) in self._biases:
            learning_rate = learning_rate * self.bias_lr_mult
        if isinstance(gradient, tf.IndexedSlices) and self.every_row:
            dense = tf.convert_to_tensor(gradient)
            self._update(dense + self.row_decay * tf.cast(variable, dense.dtype), variable,
                         learning_rate)
        elif isinstance(gradient, tf.IndexedSlices):
            self._update_rows(gradient, variable, learning_rate)
        else:
            self._update(gradient, variable, learning_rate)

    def _update(self, gradient, variable, learning_rate):
        if not self.torch_momentum:
            return super().update_step(gradient, variable, learning_rate)
        learning_rate = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        if self.momentum:
            buffer = self.momentums[self._get_variable_index(variable)]
            self.assign(buffer, self.momentum * buffer + gradient)
            gradient = gradient + self.momentum * buffer if self.nesterov else buffer
        self.assign_sub(variable, learning_rate * gradient)

    def _update_rows(self, gradient, variable, learning_rate):
        """Caffe's update on the rows `gradient` holds, decay term included."""
        rows, values = gradient.indices, gradient.values
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            # The replicas' gradients of the rows they drew arrive concatenated, each row once
            # per replica. (One device has each row once, and XLA has no tf.unique.)
            rows, position = tf.unique(rows)
            values = tf.math.unsorted_segment_sum(values, position, tf.shape(rows)[0])
        # The backend hands update_step tf.Variables, but its slots are Keras variables.
        resource = lambda v: v.value if isinstance(v, keras.Variable) else v
        variable = resource(variable)
        momentum = resource(self.momentums[self._get_variable_index(variable)]) \
            if self.momentum else None
        velocity, delta = self.row_step(
            tf.gather(variable, rows), None if momentum is None else tf.gather(momentum, rows),
            values, learning_rate)
        if velocity is not None:
            momentum.scatter_update(tf.IndexedSlices(velocity, rows))
        variable.scatter_add(tf.IndexedSlices(delta, rows))

    def row_step(self, weights, velocity, gradient, learning_rate):
        """(new momentum or None, the change to the weights) of rows `weights` with momentum
        `velocity` (None without momentum) and gradient `gradient`, by Caffe's rule (torch's
        with `torch_momentum`), weight decay `row_decay` included: Partial FC's drawn rows,
        or a replica's shard of the centres (`--shard_classes`)."""
        learning_rate = tf.cast(learning_rate, weights.dtype)
        # Caffe's rate is inside the momentum buffer, torch's outside it.
        inside, outside = (1.0, -learning_rate) if self.torch_momentum else (-learning_rate, 1.0)
        step = inside * (tf.cast(gradient, weights.dtype) + self.row_decay * weights)
        if self.momentum:
            velocity = self.momentum * velocity + step
            step = self.momentum * velocity + step if self.nesterov else velocity
        return (velocity if self.momentum else None), outside * step

    def get_config(self):
        return {**super().get_config(), "bias_lr_mult": self.bias_lr_mult,
                "row_decay": self.row_decay, "every_row": self.every_row,
                "torch_momentum": self.torch_momentum}


@keras.saving.register_keras_serializable(package="kerasbn")
class ClippedAdam(BackboneClipping, keras.optimizers.Adam):
    """Keras's Adam, the backbone's gradients clipped to `backbone_clipnorm`."""


@keras.saving.register_keras_serializable(package="kerasbn")
class ClippedAdamW(BackboneClipping, keras.optimizers.AdamW):
    """Keras's AdamW (torch.optim.AdamW's decoupled decay), the backbone's gradients clipped
    to `backbone_clipnorm`: arcface_torch's ViT configs."""

def make_optimizer(config):
    """The optimizer of `config.solver_type` on the config's learning-rate schedule."""
    schedule = schedules.make_schedule(config.schedule)
    accumulate = {"gradient_accumulation_steps": config.iter_size} \
        if config.iter_size > 1 else {}
    kind = config.solver_type
    clip = {"backbone_clipnorm": config.clip_grad_norm}
    if kind in ("SGD", "Nesterov"):
        return CaffeSGD(schedule, bias_lr_mult=config.bias_lr_mult, momentum=config.momentum,
                        nesterov=kind == "Nesterov", row_decay=config.weight_decay,
                        every_row=config.sample_update == "all",
                        torch_momentum=config.sgd == "torch", **clip, **accumulate)
    if kind == "Adam":
        return ClippedAdam(schedule, beta_1=config.momentum, beta_2=config.momentum2,
                           epsilon=config.delta, **clip, **accumulate)
    optimizer = ClippedAdamW(schedule, weight_decay=config.weight_decay,
                             beta_1=config.momentum, beta_2=config.momentum2,
                             epsilon=config.delta, **clip, **accumulate)
    excluded = ([] if config.bn_decay_mult else ["gamma", "beta"]) + (
        [] if config.bias_decay_mult else ["bias"])
    optimizer.exclude_from_weight_decay(var_names=excluded)
    return optimizer
