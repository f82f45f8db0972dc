"""Checks a TFRecord dataset against its manifest, draws samples, or describes foreign shards.

    python -m data_tools.inspect_records DIR                      # full check; exit 1 on problems
    python -m data_tools.inspect_records DIR --montage=m.png      # also draw random samples
    python -m data_tools.inspect_records DIR --write_manifest [--label_offset=1]

The check reads and parses every record, naming the shard and record index of any corrupt
one, and compares counts per split and per class with manifest.json. --write_manifest
describes TFRecords made by another tool with TensorFlow's image keys (such as the Inception
scripts' train-*/validation-* shards) so they train without conversion.
"""

import collections
import glob
import io
import os
import sys

import numpy as np
import tensorflow as tf
from absl import flags
from PIL import Image

from data_tools import shards
from kerasbn.analysis import charts
from kerasbn.data import records
from kerasbn.flags import cli
from kerasbn.utils import errors

_SPLIT_PREFIXES = {"train": "train", "validation": "test", "val": "test", "test": "test",
                   "holdout": "holdout"}


def _records(path, compression):
    """Yields (index, serialized) of a shard; raises DataError naming a corrupt record."""
    index = 0
    try:
        for serialized in tf.data.TFRecordDataset(path, compression or None):
            yield index, serialized.numpy()
            index += 1
    except tf.errors.OpError as e:
        raise records.DataError(f"{path}: record {index} is corrupt "
                                f"({records.op_message(e)})") from None


def decode_record(serialized, channels=None):
    """(uint8 HxWxC image, label, filename, format) of one serialized example."""
    feature = tf.train.Example.FromString(serialized).features.feature
    get_int = lambda key, default=None: (feature[key].int64_list.value[0] if key in feature
                                         else default)
    encoded = feature["image/encoded"].bytes_list.value[0]
    fmt = (feature["image/format"].bytes_list.value[0].decode().lower()
           if "image/format" in feature else "raw")
    height, width = get_int("image/height"), get_int("image/width")
    stored_channels = get_int("image/channels", channels or 1)
    if fmt == "raw":
        image = np.frombuffer(encoded, np.uint8)
        if image.size != height * width * stored_channels:
            raise ValueError(f"{image.size} raw bytes for a {height}x{width}x{stored_channels} "
                             "image")
        image = image.reshape(height, width, stored_channels)
    else:
        with Image.open(io.BytesIO(encoded)) as im:
            im = im.convert("L" if (channels or stored_channels) == 1 else "RGB")
            image = np.asarray(im).reshape(im.height, im.width, -1)
    label = feature["image/class/label"].int64_list.value[0]
    filename = (feature["image/filename"].bytes_list.value[0].decode("utf-8", "surrogateescape")
                if "image/filename" in feature else "")
    return image, label, filename, fmt


def check(data_dir):
    """Reads every record of every split; returns (problems, {split: Counter of labels})."""
    manifest = records.read_manifest(data_dir)
    height, width = manifest.image_size
    expected = (height, width, manifest.channels)
    offset = manifest.label_offset
    problems, counts = [], {}
    for split, info in manifest.splits.items():
        names = manifest.holdout_class_names if split == "holdout" else manifest.class_names
        num_classes = len(names)
        counts[split] = collections.Counter()
        for name in info.files:
            path = os.path.join(data_dir, name)
            try:
                for index, serialized in _records(path, manifest.compression):
                    try:
                        image, label, _, _ = decode_record(serialized, manifest.channels)
                    except Exception as e:  # any parse failure is one corrupt record
                        problems.append(f"{path}: record {index} does not parse ({e})")
                        continue
                    if image.shape != expected:
                        problems.append(f"{path}: record {index} is {image.shape}, manifest "
                                        f"says {expected}")
                    if not 0 <= label - offset < num_classes:
                        problems.append(f"{path}: record {index} has label {label} outside "
                                        f"0..{num_classes - 1}")
                    counts[split][label - offset] += 1
            except records.DataError as e:
                problems.append(str(e))
        total = sum(counts[split].values())
        if total != info.count:
            problems.append(f"{split}: {total} records read, manifest.json says {info.count}")
    return problems, counts


def montage(data_dir, out, samples=36, split="train", seed=0):
    """Draws `samples` random records of `split` in a grid labelled with identity names."""
    plt = charts.pyplot()

    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise records.DataError(f"--montage={out}: the directory {folder} does not exist; "
                                "create it or write the montage elsewhere")
    manifest = records.read_manifest(data_dir)
    names = manifest.holdout_class_names if split == "holdout" else manifest.class_names
    rng = np.random.default_rng(seed)
    chosen, seen = [], 0
    for path in records.split_files(data_dir, manifest, split):
        for _, serialized in _records(path, manifest.compression):
            seen += 1
            # Reservoir sampling: a fair sample without holding the split in memory.
            if len(chosen) < samples:
                chosen.append(serialized)
            elif (j := rng.integers(seen)) < samples:
                chosen[j] = serialized
    cols = int(np.ceil(np.sqrt(len(chosen))))
    rows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, serialized in zip(axes.flat, chosen):
        image, label, _, _ = decode_record(serialized, manifest.channels)
        label -= manifest.label_offset
        ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0,
                  vmax=255)
        ax.set_title(names[label] if 0 <= label < len(names) else str(label), fontsize=8)
    fig.suptitle(f"{os.path.basename(os.path.abspath(data_dir))}: {len(chosen)} random "
                 f"{split} images", fontsize=10)
    fig.tight_layout()
    charts.save_figure(fig, out)
    return out


def _split_of(name):
    prefix = name.split("-")[0].split(".")[0].lower()
    return _SPLIT_PREFIXES.get(prefix)


def write_manifest(data_dir, label_offset=0, compression="", overwrite=False):
    """Describes TFRecords made by another tool (files named train-*, validation-* or test-*)
    in a manifest.json: counts, classes, image size, encoding and training pixel mean/std."""
    if os.path.exists(records.manifest_path(data_dir)) and not overwrite:
        raise records.DataError(f"{records.manifest_path(data_dir)} exists; pass --overwrite "
                                "to describe the shards again")
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(data_dir, "*"))
                   if os.path.isfile(p) and _split_of(os.path.basename(p))
                   and not p.endswith((".json", shards.PARTIAL_SUFFIX)))
    if not any(_split_of(f) == "train" for f in files):
        raise records.DataError(f"{data_dir} holds no train-* TFRecord files; name the shards "
                                "train-*, validation-* (or test-*)")
    splits, shapes, formats, labels, texts = {}, set(), set(), set(), {}
    stats = None
    for name in files:
        split = _split_of(name)
        entry = splits.setdefault(split, {"files": [], "file_counts": [], "count": 0})
        entry["files"].append(name)
        entry["file_counts"].append(0)
        for _, serialized in _records(os.path.join(data_dir, name), compression):
            entry["file_counts"][-1] += 1
            image, label, _, fmt = decode_record(serialized)
            shapes.add(image.shape)
            formats.add(fmt)
            entry["count"] += 1
            if split == "train":
                labels.add(label)
                stats = stats or shards.PixelStats(image.shape[-1])
                stats.add(image)
                feature = tf.train.Example.FromString(serialized).features.feature
                if "image/class/text" in feature:
                    texts[label] = feature["image/class/text"].bytes_list.value[0].decode()
    if len(shapes) != 1:
        raise records.DataError(f"{data_dir}: images come in {len(shapes)} sizes "
                                f"({sorted(shapes)[:3]}...); convert them with build_records, "
                                "which resizes")
    if len(formats) != 1:
        raise records.DataError(f"{data_dir}: records mix formats {sorted(formats)}")
    (height, width, channels), = shapes
    num_classes = max(labels) - label_offset + 1
    if min(labels) - label_offset < 0:
        raise records.DataError(f"{data_dir}: label {min(labels)} is below --label_offset="
                                f"{label_offset}; lower --label_offset")
    mean, std = stats.mean_std()
    fmt = formats.pop()
    manifest = {
        "image_size": [height, width], "channels": channels,
        "encoding": "jpeg" if fmt in ("jpg", "jpeg") else fmt, "compression": compression,
        "label_offset": label_offset,
        "class_names": [texts.get(i + label_offset, str(i + label_offset))
                        for i in range(num_classes)],
        "splits": splits, "mean": mean, "std": std, "skipped": [],
        "source": f"existing TFRecords in {os.path.abspath(data_dir)}",
        "command": "python -m data_tools.inspect_records " + " ".join(sys.argv[1:]),
    }
    records.write_manifest(data_dir, manifest)
    return records.read_manifest(data_dir)


def main(argv):
    values, args = cli.parse(argv, define_flags, __doc__)
    if len(args) != 1:
        sys.exit("error: give one DIR: a directory of TFRecord shards")
    data_dir = args[0]
    try:
        if values.write_manifest:
            manifest = write_manifest(data_dir, values.label_offset, "GZIP" if values.gzip else "",
                                      values.overwrite)
            print(f"wrote {records.manifest_path(data_dir)}: "
                  f"{ {s: e.count for s, e in manifest.splits.items()} }, "
                  f"{manifest.num_classes} classes, "
                  f"{'x'.join(map(str, manifest.image_size))}x{manifest.channels}")
        problems, counts = check(data_dir)
        for split, counter in counts.items():
            print(f"{split}: {sum(counter.values())} records, {len(counter)} classes, "
                  f"{min(counter.values(), default=0)}..{max(counter.values(), default=0)} "
                  "per class")
        if values.montage:
            print(f"montage: {montage(data_dir, values.montage, values.samples)}")
    except errors.UserError as e:
        sys.exit(f"error: {e}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        sys.exit(f"error: {len(problems)} problem(s) in {data_dir}")
    print("ok: every record parses and the counts match manifest.json")


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("montage", None, "Write a PNG grid of random training samples here.", **on)
    flags.DEFINE_integer("samples", 36, "Samples in the montage.", lower_bound=1, **on)
    flags.DEFINE_bool("write_manifest", False, "Describe foreign TFRecords in manifest.json.", **on)
    flags.DEFINE_integer("label_offset", 0, "--write_manifest: subtracted from stored labels "
                         "(1 for TensorFlow's Inception scripts).", lower_bound=0, **on)
    flags.DEFINE_bool("gzip", False, "--write_manifest: the shards are GZIP-compressed.", **on)
    flags.DEFINE_bool("overwrite", False, "--write_manifest: replace an existing manifest.json.",
                      **on)


if __name__ == "__main__":
    main(sys.argv)
