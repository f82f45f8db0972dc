"""Writes one split's records into fixed-size TFRecord shards, never leaving a partial shard
that looks complete, and gathers the split's pixel statistics for the manifest."""

import os

import numpy as np
import tensorflow as tf

from kerasbn import records

PARTIAL_SUFFIX = ".partial"


def prepare_out_dir(out, overwrite):
    """Makes `out` ready for a new dataset; refuses to replace another one without `overwrite`.

    The old manifest goes first, so an interrupted overwrite never leaves a directory that
    still looks like a complete dataset.
    """
    os.makedirs(out, exist_ok=True)
    manifest = records.manifest_path(out)
    if os.path.exists(manifest):
        if not overwrite:
            raise records.DataError(
                f"{out} already holds a dataset ({manifest}); pass --overwrite to replace it "
                "or choose another --out")
        try:
            old = records.read_manifest(out, check_files=False)
            old_files = [name for info in old["splits"].values() for name in info["files"]]
        except records.DataError:
            old_files = []
        os.remove(manifest)
        for name in old_files:
            path = os.path.join(out, name)
            if os.path.exists(path):
                os.remove(path)
    for name in os.listdir(out):
        if name.endswith(PARTIAL_SUFFIX):
            os.remove(os.path.join(out, name))


class ShardWriter:
    """Streams serialized examples of one split into `shard_size`-record shards.

    Each shard is written under a `.partial` name and renamed once closed.
    """

    def __init__(self, out, split, total, shard_size, channels, compression=""):
        self.out = out
        self.split = split
        self.shard_size = shard_size
        self.num_shards = max(1, -(-total // shard_size))
        self.options = tf.io.TFRecordOptions(compression_type=compression or None)
        self.files = []
        self.count = 0
        self._writer = None
        self._in_shard = 0
        self._sum = np.zeros(channels)
        self._sumsq = np.zeros(channels)
        self._pixels = 0

    def _path(self):
        return os.path.join(self.out, records.shard_name(self.split, len(self.files),
                                                         self.num_shards))

    def write(self, serialized, image):
        """Adds one record; `image` is its uint8 HxWxC array, for the pixel statistics."""
        if self._writer is None:
            self._writer = tf.io.TFRecordWriter(self._path() + PARTIAL_SUFFIX, self.options)
        self._writer.write(serialized)
        pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
        self._sum += pixels.sum(axis=0)
        self._sumsq += np.square(pixels).sum(axis=0)
        self._pixels += pixels.shape[0]
        self.count += 1
        self._in_shard += 1
        if self._in_shard == self.shard_size:
            self._close_shard()

    def _close_shard(self):
        path = self._path()
        self._writer.close()
        os.replace(path + PARTIAL_SUFFIX, path)
        self.files.append(os.path.basename(path))
        self._writer = None
        self._in_shard = 0

    def close(self):
        """Closes the last shard and returns the split's manifest entry."""
        if self._writer is not None:
            self._close_shard()
        return {"files": self.files, "count": self.count}

    def mean_std(self):
        """Per-channel pixel mean and standard deviation (0-255 scale) of what was written."""
        mean = self._sum / max(1, self._pixels)
        var = self._sumsq / max(1, self._pixels) - np.square(mean)
        return mean.tolist(), np.sqrt(np.maximum(var, 1e-12)).tolist()
