"""The per-image features an IJB evaluation pools (kerasbn.evaluation.ijb), as insightface's
eval_ijbc.py computes them, each step a setting whose default is theirs: the loose crop
aligned by its five given landmarks onto the network's template (kerasbn's one alignment; no
detection), embedded with its horizontal mirror and the two raw embeddings summed (`flip`),
left unnormalised so its length weighs it (`normalize` off), times its faceness score
(`faceness`).

The raw embeddings of both views are cached per image in a .npy beside a JSON that counts
the images done, written after each batch: the real IJB-C is 469,375 images, and an
interrupted evaluation continues where it stopped. A cache belongs to one network (its
source and checkpoint) and one release.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np

from kerasbn.data import records
from kerasbn.faces import photo_alignment
from kerasbn.utils import atomic
from kerasbn.utils.progress import Progress


@dataclasses.dataclass(frozen=True)
class Settings:
    """How images become features (the module says each; the defaults are insightface's)."""
    flip: bool = True
    normalize: bool = False
    faceness: bool = True


def _crop(meta, index, settings):
    try:
        entry, crops = photo_alignment.align_photo(meta.image(index), settings,
                                                   landmarks=meta.landmarks[index])
    except ValueError as e:
        raise records.DataError(f"{meta.image(index)}: its landmarks (row {index + 1} of "
                                f"name_5pts_score.txt) {e}") from None
    if not len(crops):
        raise records.DataError(f"{meta.image(index)}: {entry['reason']}")
    return crops[0]


def raw_embeddings(serve, crops):
    """Raw embeddings [N, D] of uint8 `crops` through a serving function that returns the
    unit `embedding` and its `embedding_norm`."""
    out = serve(crops)
    return np.asarray(out["embedding"]) * np.asarray(out["embedding_norm"])[:, None]


def cache_paths(cache_dir, served, meta):
    """(features .npy, progress .json) of `served`'s cache for `meta`'s release."""
    key = json.dumps([os.path.abspath(served.source), served.checkpoint, meta.set,
                      len(meta.names)])
    stem = f"{meta.set}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    return os.path.join(cache_dir, stem + ".npy"), os.path.join(cache_dir, stem + ".json")


def embed(served, meta, cache_dir, batch_size):
    """[N, 2, D] float32 raw embeddings of every image of `meta` and of its mirror, from the
    cache where it has them, computed (and cached) for the rest."""
    height, width = served.image_size
    align = photo_alignment.Settings(height, width, served.channels)
    array_path, done_path = cache_paths(cache_dir, served, meta)
    done, views = 0, None
    if os.path.isfile(done_path) and os.path.isfile(array_path):
        with open(done_path, encoding="utf-8") as f:
            done = int(json.load(f)["done"])
        views = np.lib.format.open_memmap(array_path, mode="r+")
    total = len(meta.names)
    if done < total:
        os.makedirs(cache_dir, exist_ok=True)
        progress = Progress(total - done, f"{meta.set}: embedding" + (
            f" (resumed at {done:,} of {total:,})" if done else ""))
        for start in range(done, total, batch_size):
            indices = range(start, min(start + batch_size, total))
            crops = np.stack([_crop(meta, i, align) for i in indices])
            pair = np.stack([raw_embeddings(served.serve, crops),
                             raw_embeddings(served.serve, crops[:, :, ::-1])], axis=1)
            if views is None:
                views = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.float32,
                                                  shape=(total, 2, pair.shape[-1]))
            views[start:start + len(indices)] = pair
            views.flush()
            atomic.write_json(done_path, {"done": start + len(indices), "images": total,
                                          "source": served.source})
            progress.update(len(indices))
    return np.asarray(views)


def features(views, meta, settings):
    """[N, D] image features of the cached views under `settings`."""
    feats = views[:, 0] + views[:, 1] if settings.flip else views[:, 0]
    feats = feats.astype(np.float64)
    if settings.normalize:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if settings.faceness:
        feats = feats * meta.faceness[:, None]
    return feats
