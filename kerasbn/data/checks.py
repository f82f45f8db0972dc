"""Data integrity checks: a split's shards against its manifest (`check_split`, before training
reads them), and the dataset's note of the splits already checked whole, so a restart does not
reread them. ("Checks" are the data's; "verification" is face verification.)

`check_split` reads every record of a split once; at the study's 2.94M faces that takes tens
of seconds before each run's first step. After a check that found nothing wrong,
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

import numpy as np
import tensorflow as tf

from kerasbn.data import pipeline, records
from kerasbn.utils import atomic

FILENAME = ".verified.json"


def _path(data_dir):
    return os.path.join(data_dir, FILENAME)


def stamp(manifest, split, files):
    """What must stay as it was for a check of `split` to hold: the manifest's split, image
    size, channels, classes and encoding, and each of `files`' size and mtime."""
    written = manifest.to_dict()
    described = {key: written.get(key) for key in (
        "image_size", "channels", "class_names", "label_offset", "encoding", "compression")}
    described["split"] = written["splits"][split]
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


def is_checked(data_dir, split, current):
    """Whether `split` was checked whole with the stamp `current`."""
    return _read(data_dir).get(split) == current


def mark_checked(data_dir, split, current):
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
        split: stamp(manifest, split, [os.path.join(data_dir, name) for name in info.files])
        for split, info in manifest.splits.items() if info.files and info.count})


def check_split(data_dir, manifest, split, skip_corrupt=False):
    """Reads every record of `split` once (images not decoded) and checks it against the
    manifest: each record's image size and label, and each shard's record count.

    Returns (records readable, {shard path: records lost}). A shard that is corrupt or
    shorter than the manifest says raises DataError naming it and the fix, unless
    `skip_corrupt`, when its loss is returned instead (training then reads what is left).
    A split that passed whole is noted in the dataset (`mark_checked`) and not read again
    until a shard or the manifest changes.
    """
    info = manifest.splits[split]
    files = records.split_files(data_dir, manifest, split)
    current = stamp(manifest, split, files)
    if is_checked(data_dir, split, current):
        return info.count, {}
    expected = info.file_counts or [None] * len(files)
    height, width = manifest.image_size
    shape = [height, width, manifest.channels]
    classes, offset = manifest.num_classes, manifest.label_offset
    fix = "rebuild the dataset, or pass --skip_corrupt_records to train on the rest"
    total, lost = 0, {}
    for path, want in zip(files, expected):
        count = 0
        try:
            for batch in tf.data.TFRecordDataset(path, manifest.compression).batch(4096):
                meta = records.parse_metadata(batch)
                found = np.stack([meta["height"], meta["width"], meta["channels"]], axis=1)
                wrong = np.flatnonzero((found != shape).any(axis=1))
                if wrong.size:
                    h, w, c = found[wrong[0]]
                    raise records.DataError(
                        f"{path}: record {count + wrong[0]} holds a {h}x{w}x{c} image but "
                        f"{records.manifest_path(data_dir)} says {height}x{width}x{shape[2]}; "
                        "rebuild the shards or describe them again with inspect_records "
                        "--write_manifest")
                labels = meta["label"] - offset
                outside = np.flatnonzero((labels < 0) | (labels >= classes))
                if outside.size:
                    raise records.DataError(
                        f"{path}: record {count + outside[0]} has label "
                        f"{meta['label'][outside[0]]}, outside the manifest's {classes} "
                        f"classes (0..{classes - 1}); rebuild the dataset")
                count += len(labels)
        except tf.errors.OpError as e:
            count = int(pipeline.read_shard(path, manifest, True).reduce(0, lambda n, _: n + 1))
            if not skip_corrupt:
                raise records.DataError(f"{path} is corrupt after record {count} "
                                        f"({records.op_message(e)}); {fix}") from None
            lost[path] = (want - count) if want is not None else "unknown"
        else:
            if want is not None and count != want:
                if not skip_corrupt:
                    raise records.DataError(f"{path} holds {count} records, manifest.json "
                                            f"says {want}: the shard is truncated; {fix}")
                lost[path] = want - count
        total += count
    if total != info.count:
        if not skip_corrupt:
            raise records.DataError(f"the {split} shards of {data_dir} hold {total} records, "
                                    f"manifest.json says {info.count}; run python -m "
                                    f"data_tools.inspect_records {data_dir} to find the shard")
    elif not lost:
        mark_checked(data_dir, split, current)
    return total, lost
