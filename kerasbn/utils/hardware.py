"""What this machine's CPU and accelerators can do: native bfloat16, the CPU's peak FLOP/s, and
the precision a run of `--precision=auto` trains in. Read by the config (below training), the
runtime and the benches."""

import os

import tensorflow as tf


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
