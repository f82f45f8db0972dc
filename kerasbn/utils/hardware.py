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


# FLOPs per cycle per core (a fused multiply-add is two), by the CPU's vendor and family and
# the widest unit /proc/cpuinfo names, each precision's units best first; docs/benchmarks.md
# gives the table and its sources. Intel: Xeon server cores have two 512-bit FMA units (16
# float32 lanes each, Skylake-SP onward), AVX512-BF16's dot product doubles float32's rate,
# AMX's tile unit does 1,024 bfloat16 FLOPs. AMD family 25 (Zen 3, Zen 4): two 256-bit FMA
# pipes, which Zen 4 also runs AVX-512 on (a 512-bit op in two halves), so AVX-512 is no
# faster than AVX2 there and bfloat16 doubles it. Any other vendor or family: unknown, not
# guessed (Zen 5's full 512-bit units, Zen 1's 128-bit ones).
_PER_CYCLE = {
    ("GenuineIntel", None): {"float32": (("avx512f", 64), ("avx2", 32)),
                             "bfloat16": (("amx_bf16", 1024), ("avx512_bf16", 128))},
    ("AuthenticAMD", 25): {"float32": (("avx512f", 32), ("avx2", 32)),
                           "bfloat16": (("avx512_bf16", 64),)},
}


def _field(info, name):
    return next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.split(":", 1)[0].strip() == name), None)


def cpu_peak(precision, info=None, cores=None):
    """(peak FLOP/s of this CPU at `precision`, how it was derived), or (None, why not): the
    cores this process may use times the nominal clock times the FLOPs per cycle of the
    widest units (`_PER_CYCLE`) of this vendor and family that /proc/cpuinfo (or `info`)
    names; bfloat16 without bfloat16 units runs on the float32 ones. Turbo clocks go
    higher; the nominal one is what a core sustains with every unit busy."""
    if info is None:
        try:
            with open("/proc/cpuinfo") as f:
                info = f.read()
        except OSError:
            return None, "no /proc/cpuinfo to read the CPU from"
    vendor, family = _field(info, "vendor_id"), _field(info, "cpu family")
    table = _PER_CYCLE.get((vendor, None)) or _PER_CYCLE.get(
        (vendor, int(family) if family and family.isdigit() else None))
    if table is None:
        return None, (f"unknown for a {vendor or 'unnamed'} CPU of family {family}: its "
                      "units' FLOPs per cycle are not in the table")
    flags = set((_field(info, "flags") or "").split())
    megahertz = _field(info, "cpu MHz")
    units = (table["bfloat16"] if precision == "mixed_bfloat16" else ()) + table["float32"]
    unit, per_cycle = next(((u, n) for u, n in units if u in flags), (None, None))
    if unit is None or megahertz is None:
        return None, "its vector units or clock are not in /proc/cpuinfo"
    cores = cores or len(os.sched_getaffinity(0))
    peak = cores * float(megahertz) * 1e6 * per_cycle
    return peak, (f"{cores} cores x {float(megahertz) / 1000:.2f} GHz x {per_cycle} FLOPs per "
                  f"cycle ({vendor} {unit})")


def auto_precision():
    """The fastest precision this machine trains in natively: mixed_float16 on a GPU,
    mixed_bfloat16 on a CPU with bfloat16 instructions, else float32."""
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if native_bfloat16() else "float32"
