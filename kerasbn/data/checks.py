"""A dataset's note of the splits already checked whole, so a restart does not reread them.

`pipeline.verify_split` reads every record of a split once; at the study's 2.94M faces that
takes tens of seconds before each run's first step. After a check that found nothing wrong,
the split's stamp (the manifest's description of it and each shard's size and modification
time) goes into DATA_DIR/.verified.json; a later check whose stamp still matches skips the
reading. Any rewrite of a shard or of the manifest changes the stamp, and the reading happens
again. Record checksums (TFRecord's CRCs, checked on every read) still guard the bytes. A
read-only dataset directory simply keeps no note. The converters (`data_tools.synth`,
`build_records`) note every split they finish, whole by construction, so even a dataset's
first run starts without reading it all.
"""

import hashlib
import json
import os

from kerasbn.utils import atomic

FILENAME = ".verified.json"


def _path(data_dir):
    return os.path.join(data_dir, FILENAME)


def stamp(manifest, split, files):
    """What must stay as it was for a check of `split` to hold: the manifest's split, image
    size, channels, classes and encoding, and each of `files`' size and mtime."""
    described = {key: manifest.get(key) for key in (
        "image_size", "channels", "class_names", "label_offset", "encoding", "compression")}
    described["split"] = manifest["splits"][split]
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    shards = {}
    for path in files:
        status = os.stat(path)
        shards[os.path.basename(path)] = [status.st_size, status.st_mtime_ns]
    return {"manifest": digest, "shards": shards}


def _read(data_dir):
    try:
        with open(_path(data_dir), encoding="utf-8") as f:
            notes = json.load(f)
    except (OSError, ValueError):
        return {}
    return notes if isinstance(notes, dict) else {}


def is_verified(data_dir, split, current):
    """Whether `split` was checked whole with the stamp `current`."""
    return _read(data_dir).get(split) == current


def mark_verified(data_dir, split, current):
    """Notes that `split` passed its check with stamp `current`; skipped when the dataset's
    directory cannot be written."""
    _note(data_dir, {split: current})


def _note(data_dir, stamps):
    """Adds {split: stamp} to the dataset's note in one write; none when it is read-only."""
    notes = {**_read(data_dir), **stamps}
    try:
        atomic.write_json(_path(data_dir), notes, indent=None)
    except OSError:
        pass


def mark_written(data_dir, manifest):
    """Notes every split of `manifest` that its writer has just finished in `data_dir`."""
    _note(data_dir, {
        split: stamp(manifest, split, [os.path.join(data_dir, name) for name in info["files"]])
        for split, info in manifest["splits"].items() if info.get("files") and info.get("count")})
