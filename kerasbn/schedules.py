"""Caffe learning-rate policies as serializable Keras schedules of the global iteration.

`iter` is the optimizer's `iterations`, the number of finished weight updates, exactly as
Caffe's solver counts it; a resumed run restores it and so continues the same curve.
"""

import keras
from keras import ops

POLICIES = ("fixed", "multistep")


@keras.saving.register_keras_serializable(package="kerasbn")
class MultiStep(keras.optimizers.schedules.LearningRateSchedule):
    """Caffe `multistep`: base_lr * gamma ^ (number of stepvalues <= iter)."""

    def __init__(self, base_lr, stepvalues=(), gamma=0.1):
        self.base_lr = float(base_lr)
        self.stepvalues = [int(v) for v in stepvalues]
        self.gamma = float(gamma)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        passed = sum((ops.cast(step >= v, "float32") for v in self.stepvalues),
                     ops.zeros((), "float32"))
        return self.base_lr * ops.power(self.gamma, passed)

    def get_config(self):
        return {"base_lr": self.base_lr, "stepvalues": self.stepvalues, "gamma": self.gamma}


def make_schedule(policy, base_lr, stepvalues=(), gamma=0.1):
    """The schedule of Caffe lr_policy `policy` (`fixed` is multistep without steps)."""
    if policy == "fixed":
        return MultiStep(base_lr)
    if policy == "multistep":
        return MultiStep(base_lr, stepvalues, gamma)
    raise ValueError(f"unknown --lr_policy {policy!r}; choose one of {', '.join(POLICIES)}")
