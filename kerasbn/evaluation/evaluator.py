"""A network evaluated as `python -m kerasbn.evaluate` reports it: closed-set top-1/top-5/loss
with per-identity accuracy, face verification (with its ROC) on the dataset's holdout
pairs, on a pairs.txt over face photos, or on insightface .bin sets, and the IJB-B/C
template protocols (1:1 and 1:N)."""

import dataclasses
import os

import numpy as np

from kerasbn.data import images, pipeline, records
from kerasbn.evaluation import (accuracy, bin_sets, holdout, ijb, ijb_features, pairs,
                                verification)
from kerasbn.faces import photo_alignment
from kerasbn.utils.progress import Progress

WORST = 5


def closed_set(served, data_dir, manifest, split, batch_size):
    """{split, loss, top1, top5, count, worst identities} of `served` on a dataset's split."""
    if (served.classes, served.image_size, served.channels) != (
            manifest.num_classes, manifest.image_size, manifest.channels):
        raise records.DataError(
            f"{served.source} takes {served.image_size} x {served.channels} images into "
            f"{served.classes} classes, but {data_dir} holds {manifest.image_size} "
            f"x {manifest.channels} images of {manifest.num_classes}; give the "
            "--data_dir it was trained on")
    data = pipeline.test_dataset(data_dir, manifest, batch_size, split=split, raw=True)
    step = accuracy.make_test_step(lambda x, training=False: served.serve(x)["logits"])
    progress = Progress(manifest.splits[split].count, f"{split} split")
    result = {"split": split, **accuracy.evaluate(step, data, num_classes=served.classes,
                                                 progress=progress)}
    hits, counts = result.pop("class_hits"), result.pop("class_counts")
    seen = np.flatnonzero(counts)
    rates = hits[seen] / counts[seen]
    result["worst_identities"] = [
        {"identity": manifest.class_names[seen[i]], "accuracy": float(rates[i]),
         "images": int(counts[seen[i]])} for i in np.argsort(rates, kind="stable")[:WORST]]
    return result


def photo_size(served):
    """The square side photos are resized to for `served`; DataError when it cannot take
    photos."""
    if not served.resize_mode:
        raise records.DataError(f"{served.source}'s dataset does not record its resize_mode; "
                                "rebuild the dataset (and retrain) to evaluate on photos")
    height, width = served.image_size
    if height != width:
        raise records.DataError(f"photos are resized to squares; {served.source} takes "
                                f"{height}x{width} images")
    return height


def load_photos(files, served, align=False):
    """uint8 [N, H, W, C] of image files, made into what `served` takes: resized as its
    dataset was made, or, with `align`, each photo's largest face aligned (kerasbn.faces);
    DataError naming a photo without a face."""
    if not align:
        return images.load_batch(files, served.channels, photo_size(served),
                                 served.resize_mode, lambda i: files[i],
                                 Progress(len(files), "loading photos"))
    height, width = served.image_size
    settings = photo_alignment.Settings(height, width, served.channels)
    progress = Progress(len(files), "aligning photos", unit="photos")
    crops = []
    for path in files:
        entry, faces = photo_alignment.align_photo(path, settings)
        if not len(faces):
            raise records.DataError(f"{path}: {entry['reason']}; a pair needs a face in each "
                                    "photo (lower --min_confidence with kerasbn.align, or "
                                    "fix the photo)")
        crops.append(faces[0])
        progress.update(1)
    return np.stack(crops)


def photo_scores(served, pairs_file, image_root, batch_size, flip, align=False):
    """(scores, same, fold) of the pairs a pairs.txt names over a folder of photos (their
    largest faces aligned, with `align`)."""
    files, first, second, same, sets = pairs.file_pairs(pairs_file, image_root)
    photos = load_photos(files, served, align)
    step = holdout.embed_step(lambda x: served.serve(x)["embedding"], flip)
    embeddings = holdout.embed_batches(
        step, (photos[start:start + batch_size] for start in range(0, len(photos), batch_size)),
        Progress(len(files), "embedding photos"))
    return (verification.cosine_scores(embeddings, first, second), same,
            holdout.folds(same, sets))


def bin_scores(served, path, batch_size, flip):
    """(scores, same, fold) of an insightface .bin's pairs, in their order and its folds."""
    return bin_sets.scorer(path, lambda x: served.serve(x)["embedding"], served.channels,
                           photo_size(served), served.resize_mode, batch_size, flip,
                           progress=True)()


def figures(scores, flip):
    """The verification figures and ROC of (scores, same, fold)."""
    far, tar, _ = verification.roc(scores[0], scores[1])
    return {**verification.summarize(*scores), "verify_flip": flip,
            "roc": {"far": far.tolist(), "tar": tar.tolist()}}


@dataclasses.dataclass(frozen=True)
class Request:
    """What to evaluate a network on (`python -m kerasbn.evaluate`'s flags of the same names):
    a dataset's split, a pairs.txt over photos, insightface .bin sets, an IJB release (`ijb`,
    its features as `ijb_settings` say, cached under `ijb_cache`); `verify_flip` None: as
    the network's run verified, else False or how the mirrored views are summed ("unit",
    "raw")."""

    data_dir: str | None = None
    split: str = "test"
    batch_size: int = 256
    pairs: str | None = None
    image_root: str | None = None
    bins: tuple = ()
    verify_flip: bool | str | None = None
    align: bool = False
    ijb: str | None = None
    ijb_settings: ijb_features.Settings = ijb_features.Settings()
    ijb_cache: str = "ijb_cache"


def ijb_figures(served, values):
    """(the "ijb" figures of `served` on the release at `values.ijb`, the scores of its
    pairs in the pair file's order, their labels)."""
    meta = ijb.read(values.ijb)
    views = ijb_features.embed(served, meta, values.ijb_cache, values.batch_size)
    feats = ijb_features.features(views, meta, values.ijb_settings)
    unit, ids = ijb.pool(feats, meta.templates, meta.medias)
    scores = ijb.pair_scores(unit, ids, meta.pairs)
    figures = {"set": meta.set, "templates": int(len(ids)), **ijb.verify(scores, meta.labels),
               "settings": dataclasses.asdict(values.ijb_settings)}
    if meta.galleries is not None:
        figures.update(ijb.identify(feats, meta))
    return figures, scores, meta.labels


def evaluate_network(served, values):
    """One network's results for the `Request` `values`: closed-set on its split when there
    is a dataset and verification on its pairs photos or else on the dataset's holdout
    pairs, when there are pairs; then one result per .bin set."""
    data_dir = served.data_dir or values.data_dir
    manifest = served.manifest
    if manifest is None and data_dir:
        manifest = records.read_manifest(data_dir, check_files=True)
    result = {"source": served.source, "checkpoint": served.checkpoint}
    if manifest is not None:
        result.update(closed_set(served, data_dir, manifest, values.split, values.batch_size))
    flip = served.verify_flip if values.verify_flip is None else values.verify_flip
    embed = lambda x: served.serve(x)["embedding"]
    if values.pairs:
        result.update(figures(photo_scores(served, values.pairs, values.image_root,
                                            values.batch_size, flip, values.align), flip),
                      pairs=values.pairs, aligned=values.align)
    elif manifest is not None and manifest.has_holdout_pairs:
        progress = Progress(manifest.splits["holdout"].count, "holdout split")
        scores = holdout.scorer(embed, data_dir, manifest, values.batch_size, flip, raw=True,
                                progress=progress)()
        result.update(figures(scores, flip),
                      pairs=os.path.join(data_dir, manifest.pairs_file))
    results = [result] if manifest is not None or values.pairs else []
    for path in values.bins:
        results.append({"source": served.source, "checkpoint": served.checkpoint,
                        "pairs": path, "set": bin_sets.name(path),
                        **figures(bin_scores(served, path, values.batch_size, flip), flip)})
    if values.ijb:
        figures_of, scores, _ = ijb_figures(served, values)
        results.append({"source": served.source, "checkpoint": served.checkpoint,
                        "ijb": figures_of, "ijb_scores": scores})
    return results


def threshold_pairs(served, values):
    """(scores, same, what they are) of the verification pairs a threshold is chosen on:
    `values`' pairs.txt over photos, first .bin set, IJB release (its 1:1 template pairs), or
    its dataset's holdout pairs, each face embedded with its mirror (the two served
    embeddings summed)."""
    flip = "raw"
    if values.pairs:
        scores = photo_scores(served, values.pairs, values.image_root, values.batch_size, flip,
                              values.align)
        return scores[0], scores[1], f"the pairs of {values.pairs}"
    if values.bins:
        scores = bin_scores(served, values.bins[0], values.batch_size, flip)
        return scores[0], scores[1], f"the pairs of {values.bins[0]}"
    if values.ijb:
        _, scores, labels = ijb_figures(served, values)
        return scores, labels.astype(bool), f"the template pairs of {values.ijb}"
    manifest = records.read_manifest(values.data_dir, check_files=True)
    if not manifest.has_holdout_pairs:
        raise records.DataError(f"--data_dir={values.data_dir} has no holdout pairs to choose a "
                                "threshold on; give --pairs, --bin or --ijb")
    embed = lambda x: served.serve(x)["embedding"]
    scores = holdout.scorer(embed, values.data_dir, manifest, values.batch_size, flip, raw=True,
                            progress=Progress(manifest.splits["holdout"].count,
                                              "holdout split"))()
    return scores[0], scores[1], f"the holdout pairs of {values.data_dir}"
