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
"""

import keras
import tensorflow as tf

from kerasbn.optim import schedules


@keras.saving.register_keras_serializable(package="kerasbn")
class CaffeSGD(keras.optimizers.SGD):
    """Keras's SGD (momentum, Nesterov) with Caffe's lr_mult on biases."""

    def __init__(self, learning_rate=0.01, bias_lr_mult=1.0, row_decay=0.0, every_row=False,
                 **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.bias_lr_mult = float(bias_lr_mult)
        self.row_decay = float(row_decay)
        self.every_row = bool(every_row)

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
            super().update_step(dense + self.row_decay * tf.cast(variable, dense.dtype),
                                variable, learning_rate)
        elif isinstance(gradient, tf.IndexedSlices):
            self._update_rows(gradient, variable, learning_rate)
        else:
            super().update_step(gradient, variable, learning_rate)

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
        weights = tf.gather(variable, rows)
        learning_rate = tf.cast(learning_rate, variable.dtype)
        step = -learning_rate * (tf.cast(values, variable.dtype)
                                 + self.row_decay * weights)
        if self.momentum:
            momentum = resource(self.momentums[self._get_variable_index(variable)])
            velocity = self.momentum * tf.gather(momentum, rows) + step
            momentum.scatter_update(tf.IndexedSlices(velocity, rows))
            step = self.momentum * velocity + step if self.nesterov else velocity
        variable.scatter_add(tf.IndexedSlices(step, rows))

    def get_config(self):
        return {**super().get_config(), "bias_lr_mult": self.bias_lr_mult,
                "row_decay": self.row_decay, "every_row": self.every_row}

def make_optimizer(config):
    """The optimizer of `config.solver_type` on the config's learning-rate schedule."""
    schedule = schedules.make_schedule(config.schedule)
    accumulate = {"gradient_accumulation_steps": config.iter_size} \
        if config.iter_size > 1 else {}
    kind = config.solver_type
    if kind in ("SGD", "Nesterov"):
        return CaffeSGD(schedule, bias_lr_mult=config.bias_lr_mult, momentum=config.momentum,
                        nesterov=kind == "Nesterov", row_decay=config.weight_decay,
                        every_row=config.sample_update == "all", **accumulate)
    if kind == "Adam":
        return keras.optimizers.Adam(schedule, beta_1=config.momentum,
                                     beta_2=config.momentum2, epsilon=config.delta,
                                     **accumulate)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay,
                                       beta_1=config.momentum, beta_2=config.momentum2,
                                       epsilon=config.delta, **accumulate)
    excluded = ([] if config.bn_decay_mult else ["gamma", "beta"]) + (
        [] if config.bias_decay_mult else ["bias"])
    optimizer.exclude_from_weight_decay(var_names=excluded)
    return optimizer
