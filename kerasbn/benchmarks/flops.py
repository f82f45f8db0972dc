"""A network's floating-point operations per image, and this CPU's peak rate, so a measured
step says how far it is from the hardware (`bench --bench=peer` on the field's networks).

FLOPs count multiply-adds as two, in convolutions and fully connected layers only (BN,
PReLU and additions are a few percent more, as fvcore and ptflops leave them out too). A
training step is the forward pass, the weights' gradients (one more forward's worth) and the
inputs' gradients (another, except where no weight lies before a layer: the image needs no gradient).
"""

import os

import keras


def _macs(layer):
    """Multiply-adds of `layer` on one image: a convolution's output size times its kernel
    (over the group's inputs), a dense layer's weights; 0 for any other layer."""
    if isinstance(layer, keras.layers.Conv2D):
        _, height, width, filters = layer.output.shape
        kernel_h, kernel_w, inputs, _ = layer.kernel.shape
        return height * width * filters * kernel_h * kernel_w * inputs
    if isinstance(layer, keras.layers.Dense):
        return int(layer.kernel.shape[0] * layer.kernel.shape[1])
    return 0


def per_image(model):
    """{"forward", "training"}: FLOPs of one image through functional `model`, and of one
    training step on it. A layer's input gradient is counted only where a weight lies
    before it."""
    trained = set()  # ids of tensors that depend on a trainable weight
    forward = backward = 0
    for layer in model.layers:
        macs = _macs(layer)
        inputs_trained = any(id(t) in trained for t in keras.tree.flatten(layer.input))
        forward += macs
        backward += 2 * macs if inputs_trained else macs
        if inputs_trained or layer.trainable_weights:
            trained.update(id(t) for t in keras.tree.flatten(layer.output))
    return {"forward": 2 * forward, "training": 2 * (forward + backward)}


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
