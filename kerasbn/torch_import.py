"""Brings an arcface_torch backbone over: its state dict (`torch.save(backbone.state_dict())`,
as arcface_torch's train_v2.py saves model.pt) becomes a kerasbn export, served, evaluated
and fed aligned photos like a trained run's, and a `train --backbone` to keep training.

    python -m kerasbn.torch_import --pth model.pt --network r50 --out DIR [--threshold 0.3]

PyTorch is not needed: the file is read by an unpickler that builds only tensors, so a
malicious pickle runs nothing (kerasbn.pytorch.state_dict). --network is arcface_torch's
get_model name (r18, r34, r50, r100, mbf, vit_t, vit_s, vit_b); the widths, embedding size
and input size come from the weights. `python -m kerasbn.export --model DIR --format=pth`
writes it back. The export takes RGB photos and normalises them as arcface_torch's transform
does, (x - 127.5) / 127.5. --out follows export's rules: nothing, or an earlier export, is
replaced; nothing is written when the import fails.
"""

import math
import os
import sys
import time

from absl import flags

from kerasbn.flags import cli
from kerasbn.pytorch import importer, state_dict
from kerasbn.runs import export_layout
from kerasbn.serving import exporter


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("pth", None, "The backbone's state dict (torch.save's zip format).",
                        **on)
    flags.DEFINE_enum("network", None, list(importer.NETWORKS), "arcface_torch's network "
                      "(its get_model name).", **on)
    flags.DEFINE_string("out", None, "The export directory to write.", **on)
    flags.DEFINE_float("threshold", None, "The verification threshold (cosine) to store.",
                       lower_bound=-1, upper_bound=1, **on)


def convert(values):
    start = time.perf_counter()
    exporter.check_out(values.out)
    model, manifest = importer.build(state_dict.read(values.pth), values.network)
    height, width = manifest.image_size
    print(f"{values.pth}: arcface_torch {values.network}, {model.count_params():,} parameters, "
          f"{height}x{width} RGB in, a {model.output.shape[-1]}-d embedding", flush=True)
    given = (values.threshold, "given at import (--threshold)") \
        if values.threshold is not None else None
    kept = exporter.export_saved_model(
        model, manifest, values.out, given=given, keras_file=True,
        notes={export_layout.PYTORCH: {"pth": os.path.abspath(values.pth),
                                       "network": values.network}})
    print(f"SavedModel and model.keras: {values.out} in {time.perf_counter() - start:.1f}s"
          + (f" (your files there stayed: {', '.join(kept)})" if kept else ""))


def main(argv):
    values, rest = cli.parse(argv, define_flags, __doc__)
    missing = next((f"--{name} is required" for name in ("pth", "network", "out")
                    if not values[name].value), None)
    problem = missing or (f"unexpected arguments {rest}" if rest else None) or (
        "--threshold=nan is not a cosine; give one in [-1, 1]"
        if values.threshold is not None and math.isnan(values.threshold) else None)
    if problem:
        sys.exit(f"error: {problem}")
    cli.check_writable(values.out, by_tensorflow=True)
    cli.run(lambda: convert(values), "nothing was written at --out")


if __name__ == "__main__":
    main(sys.argv)
