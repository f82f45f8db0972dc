"""One training step of a `--shard_classes` network on R logical CPU devices, run as its own
process (the CPU is split before TensorFlow starts): writes the network's values before and
after the step, the step's loss and its batch to an .npz, for tests/test_sharded.py. With
`restore`, writes the whole centres and momentum of a run's newest checkpoint restored on R
devices instead.

    python tests/sharded_step.py OUT.npz REPLICAS CLASSES SAMPLE_CLASSES HEAD [LABEL...]
        [precision=P initial_loss_scale=S]
    python tests/sharded_step.py restore OUT.npz REPLICAS RUN_DIR
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerasbn import config  # noqa: E402
from kerasbn.runs import checkpoints, network  # noqa: E402
from kerasbn.runs.run_dir import RunDir, stored_config  # noqa: E402
from kerasbn.training import runtime  # noqa: E402

BATCH, SIZE = 8, 20


def settings(classes, sample_classes, head, **kw):
    """The run config of the step (a narrow study network without dropout)."""
    values = dict(data_dir="d", run_dir="r", num_classes=classes, image_size=(SIZE, SIZE),
                  channels=1, batch_size=BATCH, test_interval=2, seed=7,
                  schedule={"max_iter": 2, "base_lr": 0.1}, widths=(4, 4, 4, 4, 4, 4, 8),
                  dropout=0.0, head=head, weight_decay=0.01, momentum=0.9,
                  sample_classes=sample_classes, shard_classes=True)
    values.update(kw)
    return config.RunConfig(**values)


def _strategy(replicas):
    runtime.split_cpu(4)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:int(replicas)]
    return tf.distribute.MirroredStrategy(devices) if int(replicas) > 1 else \
        tf.distribute.get_strategy()


def restore(out, replicas, run_dir):
    strategy = _strategy(replicas)
    with strategy.scope():
        model = network.build_and_compile(stored_config(run_dir))
        manager = checkpoints.make_manager(RunDir(run_dir), model,
                                           tf.Variable(0.0, dtype=tf.float64),
                                           tf.Variable(0, dtype=tf.int64), 1)
    checkpoints.restore(manager)
    shards = model.get_layer("logits").shards
    np.savez(out, centres=shards.whole().numpy(), momentum=shards.whole(shards.momentum).numpy(),
             rows=shards.rows)


def main(out, replicas, classes, sample_classes, head, *rest):
    strategy = _strategy(replicas)
    labels = [x for x in rest if "=" not in x]
    given = dict(x.split("=") for x in rest if "=" in x)
    if "initial_loss_scale" in given:
        given["initial_loss_scale"] = float(given["initial_loss_scale"])
    cfg = settings(int(classes), float(sample_classes), head, **given)
    keras.mixed_precision.set_global_policy(cfg.precision)
    keras.utils.set_random_seed(3)
    with strategy.scope():
        model = network.build_and_compile(cfg)
    shards = model.get_layer("logits").shards
    rng = np.random.default_rng(5)
    images = rng.random((BATCH, SIZE, SIZE, 1), np.float32)
    labels = np.array([int(x) for x in labels]) if labels else rng.integers(0, int(classes),
                                                                            BATCH)
    before = [v.numpy() for v in model.trainable_variables]
    centres = shards.whole().numpy()
    # fit splits the batch over the replicas as training does (train_on_batch would give
    # each replica the whole batch).
    loss = model.fit(tf.data.Dataset.from_tensors((images, labels)), verbose=0).history[
        "loss"][0]
    scale = getattr(model.optimizer, "dynamic_scale", None)
    np.savez(out, loss=loss, images=images, labels=labels, centres=centres,
             scale=np.nan if scale is None else float(scale.numpy()),
             logits_dtype=model(images[:2]).dtype.name,
             after_centres=shards.whole().numpy(),
             after_momentum=shards.whole(shards.momentum).numpy(),
             **{f"before_{i}": v for i, v in enumerate(before)},
             **{f"after_{i}": v.numpy() for i, v in enumerate(model.trainable_variables)})


if __name__ == "__main__":
    restore(*sys.argv[2:]) if sys.argv[1] == "restore" else main(*sys.argv[1:])
