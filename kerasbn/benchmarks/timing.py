"""Training steps timed on one cached batch and on a dataset's real input pipeline, the
variants interleaved: the step benchmark under `bench --bench=train`, `norms`, `peer` and
`run`; and where a step's time goes, op type by op type (`bench --bench=profile`)."""

import collections
import json
import os
import re
import time

import keras
import numpy as np
import tensorflow as tf

from kerasbn.data import pipeline, records
from kerasbn.nn import models


def _stream(data_dir, batch_size, name):
    """(real training batches of `data_dir`, one of them cached and repeated, the manifest),
    or random images of the size network `name` is made for as the cached batch without a
    dataset."""
    if data_dir is None:
        shape = models.made_for(name)
        images = np.random.default_rng(0).standard_normal(
            (batch_size, *shape["image_size"], shape["channels"]), np.float32)
        labels = np.arange(batch_size) % 2
        return None, tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2), None
    manifest = records.read_manifest(data_dir)
    real = pipeline.train_dataset(data_dir, manifest, batch_size, mirror=True)
    return real, real.take(1).cache().repeat().prefetch(2), manifest


def _compiled(name, num_classes, precision, norm, xla=False, per_call=1, shape=None):
    """Network `name` in `precision`, compiled as every bench trains it: SGD with momentum,
    Caffe's weight decay 5e-4, `per_call` steps per call, XLA when `xla`; at `shape`
    (`build`'s image_size and channels), else the size it is made for."""
    keras.mixed_precision.set_global_policy(precision)
    model = models.build(name, num_classes, norm=norm, weight_decay=5e-4,
                         **{**models.made_for(name), **(shape or {})})
    keras.mixed_precision.set_global_policy("float32")
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=per_call, jit_compile=xla)
    return model


def bench_train(name, num_classes, variants, batch_size, steps, repeats, data_dir=None):
    """{(precision, norm, xla, steps_per_execution): {"cached": images/s[, "pipeline":
    images/s]}}: training steps on one cached batch (compute only) and, with
    `data_dir`, on that dataset's real input pipeline (crop-free, mirrored, shuffled), every
    variant and input measured interleaved so machine noise hits them alike; the best of
    `repeats` counts."""
    real, cached, manifest = _stream(data_dir, batch_size, name)
    shape = dict(image_size=tuple(manifest.image_size), channels=manifest.channels) \
        if manifest else None
    inputs = {"cached": cached, **({"pipeline": real} if real is not None else {})}
    compiled = {}
    for variant in variants:
        precision, norm, xla, per_call = variant
        model = _compiled(name, num_classes, precision, norm, xla, per_call, shape)
        for data in inputs.values():
            model.fit(data, steps_per_epoch=3 * per_call, epochs=1, verbose=0, shuffle=False)
        compiled[variant] = model
    best = {variant: dict.fromkeys(inputs, 0.0) for variant in compiled}
    # Whole calls only: a call of steps_per_execution steps runs them all.
    per_call = max(variant[3] for variant in compiled)
    timed = -(-steps // per_call) * per_call
    for _ in range(repeats):
        for variant, model in compiled.items():
            for kind, data in inputs.items():
                clock = CallClock()
                model.fit(data, steps_per_epoch=timed + per_call, epochs=1, verbose=0,
                          shuffle=False, callbacks=[clock])
                rate = timed * batch_size / (clock.ends[-1] - clock.ends[0])
                best[variant][kind] = max(best[variant][kind], rate)
    return best


class CallClock(keras.callbacks.Callback):
    """The end time of each call into the train function. Timing from the first call's end
    leaves out what each fit does before its steps (seconds on this CPU after switching to
    another model), which made a fed model look input-bound."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def _stock_type(op):
    """The stock TensorFlow type of oneDNN's rewrite `op` (`_MklNativeFusedConv2D` is
    _FusedConv2D, `_MklNativeConv2D` Conv2D); a fusion of oneDNN's own with no stock twin
    (Conv2DBackpropFilterWithBias) keeps its name without the prefix."""
    from tensorflow.python.framework import op_def_registry
    name = re.sub(r"^_Mkl(Native)?", "", op)
    private = "_" + name
    if name != op and op_def_registry.get(name) is None and op_def_registry.get(private):
        return private
    return name


def op_profile(name, num_classes, precision, norm, batch_size, steps, log_dir):
    """{op type: busy seconds per step} of `steps` training steps on one cached batch, from
    TensorFlow's profiler (its framework_op_stats tool, the table TensorBoard's profile tab
    shows), busiest first; threads' idle time left out. Self times of parallel ops add up,
    so the shares, not the sum, compare with a step's wall time. Where TensorFlow turns
    oneDNN on (CPUs with AVX-512 VNNI or bfloat16) it rewrites ops to `_MklNative...` or
    `_Mkl...` types; they are named here by their stock types (`_stock_type`), so profiles
    of two machines line up."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin
    _, cached, _ = _stream(None, batch_size, name)
    model = _compiled(name, num_classes, precision, norm)
    model.fit(cached, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
    tf.profiler.experimental.start(log_dir)
    model.fit(cached, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    tf.profiler.experimental.stop()
    traces = [os.path.join(root, f) for root, _, files in os.walk(log_dir) for f in files
              if f.endswith(".xplane.pb")]
    table = json.loads(plugin.xspace_to_tools_data(traces, "framework_op_stats")[0])[0]
    columns = [c["id"] for c in table["cols"]]
    busy = collections.Counter()
    for row in table["rows"]:
        cells = dict(zip(columns, [c.get("v") if c else None for c in row["c"]]))
        if cells["type"] != "IDLE":
            busy[_stock_type(cells["type"])] += cells["total_self_time"] / 1e6 / steps
    return dict(busy.most_common())
