"""Where a run executes: the tf.distribute strategy, the CPU split into logical devices, and
which process writes the run (what the hardware can do is `utils.hardware`)."""

import tensorflow as tf

from kerasbn.utils import errors


def make_strategy(name="auto"):
    """The tf.distribute strategy `name` (config.STRATEGIES) asks for on this machine."""
    if name == "multi_worker":
        # Before anything lists logical devices, which starts TensorFlow's runtime.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        # TensorFlow's default strategy: one device, and no distribution machinery at all.
        return tf.distribute.get_strategy()
    # mirrored: logical CPU devices stand in for GPUs on a machine without any (trials, tests).
    return tf.distribute.MirroredStrategy(
        gpus or [d.name for d in tf.config.list_logical_devices("CPU")])


def split_cpu(devices):
    """Splits the CPU into `devices` logical devices; only possible before TensorFlow's
    runtime starts, so the command does it first."""
    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


def describe_distribution(config, strategy):
    """{strategy, replicas, per_replica_batch} of the run under `strategy`, after checking
    that the global batch splits evenly; printed at start and kept in config.json."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise errors.UserError(
            f"--batch_size={config.batch_size} (the global batch) does not split evenly over "
            f"{replicas} replicas; give a multiple of {replicas}")
    kind = "OneDevice" if replicas == 1 and config.strategy != "multi_worker" else \
        type(strategy).__name__
    return {"strategy": kind, "replicas": replicas,
            "per_replica_batch": config.batch_size // replicas}


def is_chief(strategy):
    """Whether this process writes the run: always, but under a multi-worker strategy only
    the chief (task `chief`, else worker 0) does."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None \
            or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())
