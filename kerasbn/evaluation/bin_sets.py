"""insightface's verification sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...): a pickled
pair (encoded images, same flags), the images in pair order (pair i is images 2i and 2i+1),
read without executing anything the file names: only lists, tuples, bytes, bools, numpy
byte arrays and `_codecs.encode` (which Python 3 pickles of protocols 0-2 store bytes
through; it only turns text into bytes) are accepted. The same flags must be booleans
(Python's or numpy's): a flag written as "False" or 0 is refused rather than read as True.

The folds are insightface's: the pairs in their own order cut into ten contiguous runs
(sklearn's KFold without shuffling, which insightface's verification.py uses), so for
LFW's .bin, whose pairs follow pairs.txt, the folds are LFW's ten sets.
"""

import io
import os
import pickle

import numpy as np

from kerasbn.data import images, pipeline
from kerasbn.data.records import DataError
from kerasbn.evaluation import holdout, verification
from kerasbn.utils.progress import Progress

# What a .bin's pickle may build: numpy byte arrays as some writers left them, nothing else.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}")
        return super().find_class(module, name)


def name(path):
    """A set's name from its file: `lfw` for .../lfw.bin."""
    return os.path.splitext(os.path.basename(path))[0]


def read(path):
    """(encoded images as bytes, same flags as a bool array) of a .bin; DataError naming
    the file for anything else."""
    if not os.path.isfile(path):
        raise DataError(f"{path} not found: give an insightface verification set (lfw.bin, "
                        "cfp_fp.bin, agedb_30.bin, ...)")
    try:
        with open(path, "rb") as f:
            # Python 2's pickles (most published .bin files) hold str, read as bytes.
            encoded, same = _Unpickler(f, encoding="bytes").load()
        encoded = [bytes(e) if isinstance(e, (bytes, bytearray)) else np.asarray(e).tobytes()
                   for e in encoded]
        same = _flags(same)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            UnicodeError) as e:
        raise DataError(f"{path} is not an insightface .bin verification set ({e}); "
                        "give a (images, same flags) pickle such as lfw.bin") from None
    if len(encoded) != 2 * len(same) or not len(same):
        raise DataError(f"{path} holds {len(encoded)} images for {len(same)} pairs; a .bin "
                        "holds two images per pair")
    verification.require_both_kinds(same, path)
    return encoded, same


def _flags(same):
    """The same flags as a bool array; ValueError for a flag that is not a boolean."""
    flags = np.asarray(same, object).reshape(-1)
    for flag in flags:
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"a same flag is {type(flag).__name__} {flag!r}, not a boolean")
    return flags.astype(bool)


def folds(count, k=10):
    """insightface's fold of each of `count` pairs: ten contiguous runs, the first
    count % k of them one pair longer (sklearn's KFold)."""
    sizes = np.full(k, count // k) + (np.arange(k) < count % k)
    return np.repeat(np.arange(k), sizes)


def scorer(path, embed, channels, size, mode, batch_size, flip=False, prepare=None,
           progress=False):
    """A function returning (cosine score of each pair, matched or not, fold) now, over the
    .bin set `path`, whose images are read and resized once, here; `embed` takes batches of
    them, uint8 or as `prepare` makes them, to features. `progress` prints progress lines
    while loading and embedding."""
    encoded, same = read(path)
    counter = lambda what: Progress(len(encoded), f"{what} {name(path)}") if progress else None
    photos = images.load_batch([io.BytesIO(data) for data in encoded], channels, size, mode,
                               lambda i: f"{path}: image {i} (pair {i // 2})",
                               counter("loading"))
    step = holdout.embed_step(embed, flip)
    pair, fold = np.arange(len(same)), folds(len(same))

    def score():
        batches = (photos[start:start + batch_size] for start in range(0, len(photos), batch_size))
        embeddings = holdout.embed_batches(step, map(prepare, batches) if prepare else batches,
                                           counter("embedding"))
        return verification.cosine_scores(embeddings, 2 * pair, 2 * pair + 1), same, fold

    return score


def verifier(model, path, manifest, batch_size, flip=False):
    """A function returning `verification.summarize`'s figures on the .bin set `path` for the
    training `model` now, its images resized as the dataset's manifest says."""
    height, width = manifest.image_size
    if height != width:
        raise DataError(f"--verify_bin={path}: its photos are resized to squares, but the "
                        f"dataset holds {height}x{width} images")
    score = scorer(path, holdout.model_embedding(model), manifest.channels, height,
                   manifest.resize_mode, batch_size, flip,
                   prepare=lambda images: pipeline.normalize(images, manifest))
    return lambda: verification.summarize(*score())
