"""Writing TFRecord shards that never look complete before they are, and the pixel
statistics of what was written, for the manifest."""

import contextlib
import os

import numpy as np
import tensorflow as tf

from kerasbn import atomic, records

PARTIAL_SUFFIX = ".partial"
PAIRS_NAME = "pairs.txt"


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


@contextlib.contextmanager
def shard_writer(path, compression=""):
    """A TFRecordWriter to `path` + .partial, renamed to `path` only when the block completes."""
    partial = path + PARTIAL_SUFFIX
    writer = tf.io.TFRecordWriter(partial, tf.io.TFRecordOptions(
        compression_type=compression or None))
    try:
        yield writer
    except BaseException:
        writer.close()
        os.remove(partial)
        raise
    writer.close()
    os.replace(partial, path)


class PixelStats:
    """Running per-channel sums of pixel values, mergeable across shards and resumes."""

    def __init__(self, channels, state=None):
        state = state or {}
        self.sum = np.asarray(state.get("sum", np.zeros(channels)), np.float64)
        self.sumsq = np.asarray(state.get("sumsq", np.zeros(channels)), np.float64)
        self.pixels = int(state.get("pixels", 0))

    def add(self, image):
        pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
        self.sum += pixels.sum(axis=0)
        self.sumsq += np.square(pixels).sum(axis=0)
        self.pixels += pixels.shape[0]

    def merge(self, other):
        self.sum += other.sum
        self.sumsq += other.sumsq
        self.pixels += other.pixels

    def state(self):
        return {"sum": self.sum.tolist(), "sumsq": self.sumsq.tolist(), "pixels": self.pixels}

    def mean_std(self):
        """Per-channel mean and standard deviation on the 0-255 scale."""
        mean = self.sum / max(1, self.pixels)
        var = self.sumsq / max(1, self.pixels) - np.square(mean)
        return mean.tolist(), np.sqrt(np.maximum(var, 1e-12)).tolist()


class ShardWriter:
    """Streams one split's serialized examples into `shard_size`-record shards."""

    def __init__(self, out, split, total, shard_size, channels, compression=""):
        self.out = out
        self.split = split
        self.shard_size = shard_size
        self.num_shards = max(1, -(-total // shard_size))
        self.compression = compression
        self.files = []
        self.file_counts = []
        self.count = 0
        self.stats = PixelStats(channels)
        self._shard = None
        self._writer = None
        self._in_shard = 0

    def write(self, serialized, image):
        """Adds one record; `image` is its uint8 HxWxC array, for the pixel statistics."""
        if self._writer is None:
            name = records.shard_name(self.split, len(self.files), self.num_shards)
            self._shard = shard_writer(os.path.join(self.out, name), self.compression)
            self._writer = self._shard.__enter__()
        self._writer.write(serialized)
        self.stats.add(image)
        self.count += 1
        self._in_shard += 1
        if self._in_shard == self.shard_size:
            self._close_shard()

    def _close_shard(self):
        self._shard.__exit__(None, None, None)
        self.files.append(records.shard_name(self.split, len(self.files), self.num_shards))
        self.file_counts.append(self._in_shard)
        self._shard = self._writer = None
        self._in_shard = 0

    def close(self):
        """Closes the last shard and returns the split's manifest entry."""
        if self._writer is not None:
            self._close_shard()
        return {"files": self.files, "file_counts": self.file_counts, "count": self.count}


def write_pairs(path, holdout, written, count, seed):
    """Writes `count` matched and `count` mismatched holdout pairs in LFW's pairs.txt format.

    Image numbers are 1-based positions in the identity's holdout records sorted by
    image/filename. Returns the number of pairs of each kind written.
    """
    per_identity = {}
    for label, name in sorted(written, key=lambda w: w[1]):
        per_identity.setdefault(label, []).append(name)
    rng = np.random.default_rng([seed, 3])
    multi = [label for label, names in per_identity.items() if len(names) >= 2]
    labels = list(per_identity)
    if not multi or len(labels) < 2:
        raise records.DataError("--pairs needs at least two holdout identities, one of them "
                                "with two or more images; raise --holdout_identities")
    lines = []
    for _ in range(count):
        label = multi[rng.integers(len(multi))]
        i, j = sorted(rng.choice(len(per_identity[label]), 2, replace=False) + 1)
        lines.append(f"{holdout[label]}\t{i}\t{j}")
    for _ in range(count):
        a, b = rng.choice(len(labels), 2, replace=False)
        a, b = labels[a], labels[b]
        lines.append(f"{holdout[a]}\t{rng.integers(len(per_identity[a])) + 1}\t"
                     f"{holdout[b]}\t{rng.integers(len(per_identity[b])) + 1}")
    atomic.write_text(path, f"1\t{count}\n" + "\n".join(lines) + "\n")
    return count
