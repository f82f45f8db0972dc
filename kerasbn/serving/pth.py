"""A run's backbone (or a torch_import's export) written as an arcface_torch state dict
(`python -m kerasbn.export --format=pth`): the file torch.save(backbone.state_dict()) would
be, for arcface_torch's `get_model(name, num_features=...).load_state_dict`, with a JSON
beside it saying which network, its widths and embedding, and what input it was trained on.
It is written through a temporary file, replacing only an earlier one of kerasbn's."""

import json
import os

import keras

from kerasbn.data import records
from kerasbn.nn import models
from kerasbn.pytorch import backbone_state, layouts, state_dict
from kerasbn.pytorch.state_dict import StateDictError
from kerasbn.runs import export_layout
from kerasbn.runs.run_dir import RunDir
from kerasbn.serving import exporter, portable, signatures
from kerasbn.utils import atomic

FORMAT = "pth"
# What arcface_torch's transform makes of a photo's pixels.
TORCH_INPUT = "RGB pixels, (x - 127.5) / 127.5, as arcface_torch's transform"


def _import_spec(path):
    """The marker of the export at `path` of kerasbn.torch_import (DataError otherwise)."""
    try:
        with open(os.path.join(path, export_layout.MARKER), encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        spec = {}
    if export_layout.PYTORCH not in spec or not os.path.isfile(
            os.path.join(path, export_layout.KERAS_MODEL)):
        raise records.DataError(f"{path} is no export of python -m kerasbn.torch_import; give "
                                "one, or a trained run's --run_dir")
    return spec


def _from_run(run_dir, best):
    """(Keras model holding the backbone's layers, arcface_torch network, input) of a run."""
    config, manifest, model, _ = signatures.restore_run(run_dir, best)
    if config.backbone:
        network = _import_spec(config.backbone)[export_layout.PYTORCH]["network"]
        return model.get_layer("backbone"), network, TORCH_INPUT
    ours = {kerasbn: torch for torch, kerasbn in layouts.NETWORKS.items()}
    if config.model not in ours:
        raise records.DataError(
            f"--run_dir={run_dir} trains --model={config.model}, which arcface_torch does not "
            f"define; a state dict is written for {', '.join(ours)} (or a --backbone brought "
            "in by kerasbn.torch_import)")
    default = models.default_widths(config.model)
    note = (f"; arcface_torch's get_model builds widths {default}, this run {list(config.widths)}"
            if config.widths and list(config.widths) != default else "")
    return model, ours[config.model], (
        f"{'gray' if manifest.channels == 1 else 'RGB'} pixels, (x - mean) / std with the "
        f"dataset's mean {list(manifest.mean)} and std {list(manifest.std)}{note}")


def export(source, out=None, best=False, from_export=False):
    """Writes the state dict of the run at `source` (its newest or `best` checkpoint), or of
    the torch_import export at `source` with `from_export`, to `out` (default: the run's
    export.pth, or the export's path + .pth); returns (out, network, keys written)."""
    if from_export:
        spec = _import_spec(source)
        model = keras.saving.load_model(os.path.join(source, export_layout.KERAS_MODEL))
        network, inputs = spec[export_layout.PYTORCH]["network"], TORCH_INPUT
        out = out or os.path.abspath(source).rstrip(os.sep) + export_layout.SUFFIXES[FORMAT]
    else:
        model, network, inputs = _from_run(source, best)
        out = out or RunDir(source).export + export_layout.SUFFIXES[FORMAT]
    exporter.check_out(out, FORMAT)
    try:
        state = backbone_state.state_of(model, network)
    except StateDictError as e:
        raise StateDictError(f"{source} cannot be written as arcface_torch's {network}: "
                             f"{e}") from None
    embedding = model.get_layer("embedding").output.shape[-1]
    _write(out, state, {
        "written_by": "kerasbn", "network": network, "kerasbn_network": layouts.NETWORKS[network],
        "load_with": f"get_model({network!r}, num_features={embedding}).load_state_dict("
                     "torch.load(PATH))",
        "input": inputs})
    return out, network, len(state)



def _write(out, state, description):
    sidecar = portable.sidecar(out)
    if os.path.exists(sidecar):
        os.remove(sidecar)
    atomic.write_with(out, lambda f: state_dict.write(f, state))
    atomic.write_json(sidecar, {**description, "format": FORMAT, "keys": len(state)})
