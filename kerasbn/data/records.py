"""The record contract between `data_tools` and `kerasbn`: TFRecord keys and manifest.json.

Keys follow TensorFlow's image-record convention (`image/encoded`, `image/class/label`, ...)
so TFRecords made by other tools train once they are described by a manifest.
"""

import io
import json
import os
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from kerasbn.data.manifest import ENCODINGS, Manifest
from kerasbn.utils import atomic
from kerasbn.utils.errors import DataError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "test", "holdout")

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value="raw"),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/channels": tf.io.FixedLenFeature([], tf.int64, default_value=1),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def op_message(error):
    """A TensorFlow error's own words, without its function-node and op decorations."""
    text = re.sub(r"\{\{.*?\}\}\s*", "", error.message.strip().splitlines()[0])
    return text.split(" [Op:")[0].strip()


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_image(image, encoding):
    """Returns the bytes stored under `image/encoded` for a uint8 HxWxC array.

    Pillow, not a TensorFlow op, encodes: build_records calls this in forked workers.
    """
    if encoding == "raw":
        return image.tobytes()
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(
        buffer, "PNG" if encoding == "png" else "JPEG", quality=95)
    return buffer.getvalue()


def encode_example(image, label, encoding="raw", filename=""):
    """Serializes one uint8 image (HxW or HxWxC) and its integer label as a tf.train.Example."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    feature = {
        "image/encoded": _bytes(encode_image(np.ascontiguousarray(image), encoding)),
        "image/format": _bytes(encoding.encode()),
        "image/height": _int(height),
        "image/width": _int(width),
        "image/channels": _int(channels),
        "image/class/label": _int(label),
        # A name that is not UTF-8 on disk keeps its own bytes.
        "image/filename": _bytes(filename.encode("utf-8", "surrogateescape")),
    }
    # Deterministic: protobuf map order would otherwise vary, and the same seed must give the
    # same shard bytes (README).
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def parse_metadata(serialized):
    """{height, width, channels, label, filename} numpy arrays of a 1-D batch of serialized
    examples, without decoding the images (for checking shards quickly)."""
    keys = {k: v for k, v in _FEATURES.items() if k != "image/encoded"}
    parsed = tf.io.parse_example(serialized, keys)
    return {key.split("/")[-1]: parsed[key].numpy() for key in
            ("image/height", "image/width", "image/channels", "image/class/label",
             "image/filename")}


def _decode_one(encoded, channels):
    return tf.io.decode_image(encoded, channels=channels, expand_animations=False)


def parse_batch(serialized, image_size, channels, encoding="raw", label_offset=0):
    """Parses a 1-D batch of serialized examples into (uint8 [N, H, W, C] images, int32 labels).

    `label_offset` is subtracted from the stored labels (1 for TensorFlow's Inception
    scripts, which keep 0 for background).
    `raw` decodes the whole batch in one op; `png` and `jpeg` decode image by image. A record
    whose stored size disagrees with `image_size`/`channels` fails with a message naming it.
    """
    height, width = image_size
    # Only what decoding needs; the filename (a third of the parse) only for a bad record.
    parsed = tf.io.parse_example(serialized, {k: _FEATURES[k] for k in (
        "image/encoded", "image/height", "image/width", "image/channels", "image/class/label")})
    shape = tf.stack(
        [parsed["image/height"], parsed["image/width"], parsed["image/channels"]], axis=1)
    expected = tf.constant([height, width, channels], tf.int64)
    bad = ~tf.reduce_all(tf.equal(shape, expected), axis=1)
    any_bad = tf.reduce_any(bad)
    name = tf.cond(any_bad, lambda: tf.boolean_mask(tf.io.parse_example(
        serialized, {"image/filename": _FEATURES["image/filename"]})["image/filename"], bad)[:1],
                   lambda: tf.constant([], tf.string))
    check = tf.debugging.Assert(
        ~any_bad,
        ["a record's image size (height, width, channels) disagrees with manifest.json:",
         tf.boolean_mask(shape, bad)[:1], f"expected {height}x{width}x{channels}; record:",
         name,
         "fix: rebuild the shards or describe them again with inspect_records --write_manifest"],
        summarize=3)
    with tf.control_dependencies([check]):
        encoded = tf.identity(parsed["image/encoded"])
    if encoding == "raw":
        images = tf.reshape(tf.io.decode_raw(encoded, tf.uint8), [-1, height, width, channels])
    elif encoding in ("png", "jpeg"):
        images = tf.map_fn(lambda e: _decode_one(e, channels), encoded,
                           fn_output_signature=tf.TensorSpec([None, None, channels], tf.uint8))
        images = tf.ensure_shape(images, [None, height, width, channels])
    else:
        raise ValueError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
    return images, tf.cast(parsed["image/class/label"] - label_offset, tf.int32)


def shard_name(split, index, num_shards):
    """File name of one shard, as TensorFlow's own dataset tools name them."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def manifest_path(data_dir):
    return os.path.join(data_dir, MANIFEST_NAME)


def write_manifest(data_dir, values):
    """Writes manifest.json (a dict, or a `Manifest`) atomically: a reader sees the old file
    or the whole new one."""
    if isinstance(values, Manifest):
        values = values.to_dict()
    atomic.write_json(manifest_path(data_dir), dict(values, schema_version=SCHEMA_VERSION))


def read_manifest(data_dir, check_files=True):
    """The dataset's `Manifest`, read and checked once; raises DataError naming the file and
    the fix (`check_files`: also that every shard it lists is there)."""
    path = manifest_path(data_dir)
    if not os.path.isfile(path):
        raise DataError(
            f"{path} not found: --data_dir must be a directory made by "
            "`python -m data_tools.synth` or `python -m data_tools.build_records`")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); rebuild the dataset") from None
    version = values.get("schema_version") if isinstance(values, dict) else None
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path} has schema_version {version!r}, this kerasbn reads version "
            f"{SCHEMA_VERSION}; rebuild the dataset with this version's data_tools")
    manifest = Manifest.from_dict(values, path)
    if check_files:
        for split, info in manifest.splits.items():
            absent = [name for name in info.files
                      if not os.path.isfile(os.path.join(data_dir, name))]
            if absent:
                raise DataError(
                    f"{path} lists {len(absent)} {split} shard(s) that are missing, first "
                    f"{os.path.join(data_dir, absent[0])}; restore them or rebuild the dataset")
    return manifest


def split_files(data_dir, manifest, split):
    """Absolute shard paths of one split; DataError when the split is absent or empty."""
    info = manifest.splits.get(split)
    if not info or not info.files or not info.count:
        raise DataError(f"{manifest_path(data_dir)} has no {split!r} records; "
                        "rebuild the dataset with a non-empty split")
    return [os.path.join(data_dir, name) for name in info.files]
