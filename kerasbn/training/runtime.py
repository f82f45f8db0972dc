"""Where a run executes: the tf.distribute strategy, the CPU split into logical devices, which
process writes the run, and the precision this machine trains in natively."""

import os

import tensorflow as tf

from kerasbn.utils import errors


def native_bfloat16():
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them
    bfloat16 is emulated, slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return bool({"avx512_bf16", "amx_bf16"} & set(f.read().split()))
    except OSError:
        return False


# FLOPs per cycle per core: AVX-512 has two 16-lane float32 FMA units on Xeon server cores
# (Intel's optimization manual, Skylake-SP onward; one FMA is two FLOPs), AVX2 two 8-lane
# ones; AMX's tile unit does 1,024 bfloat16 FLOPs per cycle (16x32 by 32x16 tiles, 16
# cycles each).
_PER_CYCLE = {"avx512f": 64, "avx2": 32, "amx_bf16": 1024}


def cpu_peak(precision, info=None, cores=None):
    """(peak FLOP/s of this CPU at `precision`, how it was derived), or (None, why not): the
    cores this process may use times the nominal clock times the FLOPs per cycle of the
    widest units (`_PER_CYCLE`) that /proc/cpuinfo (or `info`) names. Turbo clocks go
    higher; the nominal one is what a core sustains with every unit busy."""
    if info is None:
        try:
            with open("/proc/cpuinfo") as f:
                info = f.read()
        except OSError:
            return None, "no /proc/cpuinfo to read the CPU from"
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines()
                      if line.startswith("flags")), []))
    megahertz = next((float(line.split(":", 1)[1]) for line in info.splitlines()
                      if line.startswith("cpu MHz")), None)
    cores = cores or len(os.sched_getaffinity(0))
    units = ["amx_bf16"] if precision == "mixed_bfloat16" else []
    unit = next((u for u in units + ["avx512f", "avx2"] if u in flags), None)
    if unit is None or megahertz is None:
        return None, "its vector units or clock are not in /proc/cpuinfo"
    peak = cores * megahertz * 1e6 * _PER_CYCLE[unit]
    return peak, (f"{cores} cores x {megahertz / 1000:.2f} GHz x {_PER_CYCLE[unit]} FLOPs per "
                  f"cycle ({unit})")


def auto_precision():
    """The fastest precision this machine trains in natively: mixed_float16 on a GPU,
    mixed_bfloat16 on a CPU with bfloat16 instructions, else float32."""
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if native_bfloat16() else "float32"


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
