"""Writing TFRecord shards that never look complete before they are, and the pixel
statistics of what was written, for the manifest."""

import contextlib
import os
import re

import numpy as np
import tensorflow as tf

from kerasbn.data import records
from kerasbn.utils import atomic

PARTIAL_SUFFIX = ".partial"
# A shard's name (records.shard_name), whole or half-written: the only files in --out a new
# run may delete; a user's own `notes.partial` or `mine.tfrecord` stays.
_SHARD = re.compile(r"^(?:%s)-\d{5}-of-\d{5}\.tfrecord(%s)?$" % (
    "|".join(records.SPLITS), re.escape(PARTIAL_SUFFIX)))


def is_shard(name, partial=False):
    """Whether file `name` is a shard a converter writes (its half-written form, with
    `partial`)."""
    match = _SHARD.match(name)
    return bool(match) and bool(match.group(1)) == partial
PAIRS_NAME = "pairs.txt"


def check_out_dir(out):
    """Raises DataError when --out is a file."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise records.DataError(f"--out={out} is a file; give a directory (new, or a "
                                "dataset's)")


def prepare_out_dir(out, overwrite):
    """Makes `out` ready for a new dataset; refuses to replace another one without `overwrite`.

    The old manifest goes first, so an interrupted overwrite never leaves a directory that
    still looks like a complete dataset.
    """
    check_out_dir(out)
    os.makedirs(out, exist_ok=True)
    manifest = records.manifest_path(out)
    if os.path.exists(manifest):
        if not overwrite:
            raise records.DataError(
                f"{out} already holds a dataset ({manifest}); pass --overwrite to replace it "
                "or choose another --out")
        try:
            old = records.read_manifest(out, check_files=False)
            old_files = [name for info in old.splits.values() for name in info.files]
        except records.DataError:
            old_files = []
        os.remove(manifest)
        for name in old_files:
            path = os.path.join(out, name)
            if os.path.exists(path):
                os.remove(path)
    for name in os.listdir(out):
        if is_shard(name, partial=True):
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


def _triangle(k):
    """The (i, j), i < j, of flat index k over the pairs of a set: 0->(0,1), 1->(0,2), 2->(1,2)."""
    j = np.floor((1 + np.sqrt(1 + 8 * k.astype(np.float64))) / 2).astype(np.int64)
    j -= j * (j - 1) // 2 > k
    return k - j * (j - 1) // 2, j


def write_pairs(path, holdout, written, count, seed):
    """Writes `count` matched and `count` mismatched holdout pairs in LFW's pairs.txt format.

    Pairs are distinct, as in LFW's list, so no comparison weighs twice. Image numbers are
    1-based positions in the identity's holdout records sorted by image/filename. Returns
    the number of pairs of each kind written; DataError when the holdout images cannot make
    that many.
    """
    per_identity = {}
    for label, name in sorted(written, key=lambda w: w[1]):
        per_identity.setdefault(label, []).append(name)
    labels = list(per_identity)
    sizes = np.array([len(per_identity[label]) for label in labels], dtype=np.int64)
    matched_total = sizes * (sizes - 1) // 2
    images = int(sizes.sum())
    mismatched_total = images * (images - 1) // 2 - int(matched_total.sum())
    # Rejection sampling of mismatched pairs slows down once most are taken.
    if count > matched_total.sum() or 2 * count > mismatched_total:
        raise records.DataError(
            f"--pairs={count}: the {len(labels)} holdout identities ({images} images) make "
            f"{int(matched_total.sum())} distinct matched and {mismatched_total} mismatched "
            f"pairs (at most half of those are drawn); raise --holdout_identities or lower "
            f"--pairs")
    rng = np.random.default_rng([seed, 3])
    flat = np.sort(rng.choice(int(matched_total.sum()), count, replace=False))
    owner = np.searchsorted(np.cumsum(matched_total), flat, side="right")
    i, j = _triangle(flat - (np.cumsum(matched_total) - matched_total)[owner])
    lines = [f"{holdout[labels[o]]}\t{a + 1}\t{b + 1}" for o, a, b in zip(owner, i, j)]
    first_image = np.cumsum(sizes) - sizes
    identity_of = np.repeat(np.arange(len(labels)), sizes)
    chosen = set()
    while len(chosen) < count:
        a, b = rng.integers(images, size=(2, count))
        for x, y in zip(np.minimum(a, b), np.maximum(a, b)):
            if identity_of[x] != identity_of[y] and len(chosen) < count:
                chosen.add((int(x), int(y)))
    for x, y in sorted(chosen):
        a, b = identity_of[x], identity_of[y]
        lines.append(f"{holdout[labels[a]]}\t{x - first_image[a] + 1}\t"
                     f"{holdout[labels[b]]}\t{y - first_image[b] + 1}")
    atomic.write_text(path, f"1\t{count}\n" + "\n".join(lines) + "\n")
    return count
