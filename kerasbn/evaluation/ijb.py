"""IJB-B and IJB-C, the field's template benchmarks, as insightface evaluates them
(recognition/arcface_torch/eval_ijbc.py for 1:1; recognition/_evaluation_/ijb/ijb_evals.py,
after its PR #1739, for 1:N), on insightface's release layout of the NIST sets:

    DIR/loose_crop/*.jpg
    DIR/meta/ijbc_face_tid_mid.txt            name template_id media_id       (one row per image)
    DIR/meta/ijbc_name_5pts_score.txt         name x1 y1 ... x5 y5 faceness   (the same rows)
    DIR/meta/ijbc_template_pair_label.txt     tid1 tid2 label                 (1:1)
    DIR/meta/ijbc_1N_gallery_G1.csv, _G2.csv, ijbc_1N_probe_mixed.csv       (1:N, optional)

IJB-B names the same files ijbb_* with galleries S1 and S2.

A person is a template: a set of images and video frames. Each image's feature (computed by
`ijb_features`) is pooled: the mean over each media's images, the sum over a template's
media, then L2-normalised; a pair's score is the dot product of its two templates. 1:1 reads
the ROC as scikit-learn's roc_curve builds it: TAR at the vertex whose FPR lies nearest each
FAR (insightface's reading, the highest TAR at a repeated FPR), and beside it kerasbn's own,
the TAR at the loosest threshold whose FAR is at most F. 1:N searches each gallery with every
probe template: a probe whose subject the gallery holds is a mated search, any other a
non-mated one; rank-k is the share of mated searches whose mate is among the k best (ties:
a later gallery template first, as a stable argsort(...)[::-1]); TPIR at FPIR F is the share
of mated searches whose mate beats every other template and the threshold at the top of the
non-mated searches' best scores (the one ranked max(int(n F), 1)); both galleries averaged.
"""

import dataclasses
import os

import numpy as np
from sklearn import metrics

from kerasbn.data import records
from kerasbn.evaluation import verification

# The releases' file prefix: (the set's name, its two galleries).
SETS = {"ijbc": ("IJB-C", ("G1", "G2")), "ijbb": ("IJB-B", ("S1", "S2"))}
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIRS = (1e-2, 1e-1)
RANKS = (1, 5, 10)
IMAGES = "loose_crop"


@dataclasses.dataclass(frozen=True)
class Meta:
    """An IJB release's metadata: per image (rows in the files' order) its name, template,
    media, five landmarks [N, 5, 2] and faceness score; the 1:1 pairs [P, 2] of template ids
    and their labels; per gallery name and for the probes, (template ids, subject ids) of
    each row (None without 1:N files)."""
    root: str
    set: str
    names: tuple
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    faceness: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray
    galleries: dict | None
    probes: tuple | None

    def image(self, index):
        return os.path.join(self.root, IMAGES, self.names[index])


def _rows(path, columns, skip=0, sep=None):
    """The rows of a whitespace (or `sep`) separated file, each split into at least
    `columns` fields; DataError naming the file and line otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()[skip:]
    except (OSError, UnicodeDecodeError) as e:
        raise records.DataError(f"{path} cannot be read ({e})") from None
    rows = [line.split(sep) for line in lines if line.strip()]
    for number, row in enumerate(rows, start=1 + skip):
        if len(row) < columns:
            raise records.DataError(f"{path} line {number} has {len(row)} fields where "
                                    f"{columns} are needed")
    if not rows:
        raise records.DataError(f"{path} holds no rows")
    return rows


def _ints(path, rows, columns):
    try:
        return np.array([[int(row[c]) for c in columns] for row in rows], np.int64)
    except ValueError as e:
        raise records.DataError(f"{path}: {e}; its ids must be integers") from None


def read(root):
    """The `Meta` of the IJB release at `root`; DataError in one line for a missing or
    inconsistent file."""
    meta = os.path.join(root, "meta")
    found = [prefix for prefix in SETS
             if os.path.isfile(os.path.join(meta, f"{prefix}_face_tid_mid.txt"))]
    if not found:
        raise records.DataError(f"--ijb={root} holds no meta/ijbc_face_tid_mid.txt or "
                                "meta/ijbb_face_tid_mid.txt: give insightface's IJB release "
                                "folder (loose_crop/ and meta/)")
    prefix = found[0]
    name, gallery_names = SETS[prefix]
    path = lambda suffix: os.path.join(meta, f"{prefix}_{suffix}")
    tid_mid = _rows(path("face_tid_mid.txt"), 3)
    ids = _ints(path("face_tid_mid.txt"), tid_mid, (1, 2))
    points = _rows(path("name_5pts_score.txt"), 12)
    if len(points) != len(tid_mid):
        raise records.DataError(f"{path('name_5pts_score.txt')} has {len(points)} rows but "
                                f"{path('face_tid_mid.txt')} {len(tid_mid)}; they must list the "
                                "same images in the same order")
    for number, (a, b) in enumerate(zip(tid_mid, points), start=1):
        if a[0] != b[0]:
            raise records.DataError(f"line {number} names {a[0]} in face_tid_mid.txt but "
                                    f"{b[0]} in name_5pts_score.txt; they must list the same "
                                    "images in the same order")
    try:
        values = np.array([[float(v) for v in row[1:12]] for row in points])
    except ValueError as e:
        raise records.DataError(f"{path('name_5pts_score.txt')}: {e}") from None
    templates = ids[:, 0]
    pair_rows = _rows(path("template_pair_label.txt"), 3)
    pairs = _ints(path("template_pair_label.txt"), pair_rows, (0, 1, 2))
    _check_known(pairs[:, :2].ravel(), templates, path("template_pair_label.txt"))
    one_to_n = [path(f"1N_gallery_{g}.csv") for g in gallery_names] + [
        path("1N_probe_mixed.csv")]
    galleries = probes = None
    if all(os.path.isfile(f) for f in one_to_n):
        lists = []
        for file in one_to_n:
            ids_of = _ints(file, _rows(file, 2, skip=1, sep=","), (0, 1))
            _check_known(ids_of[:, 0], templates, file)
            lists.append((ids_of[:, 0], ids_of[:, 1]))
        galleries, probes = dict(zip(gallery_names, lists[:2])), lists[2]
    return Meta(root, name, tuple(row[0] for row in tid_mid), templates, ids[:, 1],
                values[:, :10].reshape(-1, 5, 2), values[:, 10], pairs[:, :2], pairs[:, 2],
                galleries, probes)


def _check_known(used, templates, path):
    unknown = np.setdiff1d(used, templates)
    if len(unknown):
        raise records.DataError(f"{path} names template {unknown[0]}, which no image of "
                                "face_tid_mid.txt belongs to")


def pool(features, templates, medias, chosen=None):
    """(L2-normalised template features [T, D], their template ids [T], ascending) of image
    `features` [N, D]: each media's images averaged, a template's media summed. `chosen`:
    the template ids to pool (default: every template)."""
    ids = np.unique(templates if chosen is None else chosen)
    pooled = np.zeros((len(ids), features.shape[1]), np.float64)
    order = np.argsort(templates, kind="stable")
    starts = np.searchsorted(templates[order], ids)
    ends = np.searchsorted(templates[order], ids, side="right")
    for row, (start, end) in enumerate(zip(starts, ends)):
        members = order[start:end]
        media = medias[members]
        for value in np.unique(media):
            pooled[row] += features[members[media == value]].mean(axis=0)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12), ids


def pair_scores(unit, ids, pairs):
    """The score of each pair [P, 2] of template ids: its templates' dot product."""
    rows = np.searchsorted(ids, pairs)
    return np.sum(unit[rows[:, 0]] * unit[rows[:, 1]], axis=1)


def verify(scores, labels):
    """1:1 figures of the pair `scores` and their `labels`: AUC, TAR at each of FARS by
    insightface's nearest-vertex reading and by kerasbn's at-most reading, and the ROC."""
    labels = np.asarray(labels).astype(bool)
    verification.require_both_kinds(labels, "the template pair file")
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    flipped_fpr, flipped_tpr = fpr[::-1], tpr[::-1]
    nearest = {f"{far:.0e}": float(flipped_tpr[np.argmin(np.abs(flipped_fpr - far))])
               for far in FARS}
    at_most = {f"{far:.0e}": verification.tar_at_far(scores, labels, far) for far in FARS}
    return {"pairs": int(len(labels)), "genuine": int(labels.sum()),
            "auc": float(metrics.auc(fpr, tpr)), "tar@far": nearest,
            "tar@far_at_most": at_most, "roc": {"far": fpr.tolist(), "tar": tpr.tolist()}}


def _search(probes, probe_subjects, gallery, gallery_subjects):
    """One gallery searched by every probe: (ranks of the mated searches' mates, whether each
    mate beats every other template, its score, the non-mated searches' best scores)."""
    similarity = probes @ gallery.T
    ranks, correct, mated_scores, non_mated = [], [], [], []
    for row, subject in enumerate(probe_subjects):
        scores = similarity[row]
        mates = np.flatnonzero(gallery_subjects == subject)
        if not len(mates):
            non_mated.append(scores.max())
            continue
        mate = mates[0]
        later_ties = np.sum(scores[mate + 1:] == scores[mate])
        ranks.append(1 + int(np.sum(scores > scores[mate])) + int(later_ties))
        others = np.delete(scores, mate)
        correct.append(not len(others) or scores[mate] > others.max())
        mated_scores.append(scores[mate])
    return (np.array(ranks, np.int64), np.array(correct, bool), np.array(mated_scores),
            np.sort(np.array(non_mated))[::-1])


def identify(features, meta):
    """1:N figures: rank-1/5/10 over every mated search of both galleries, TPIR at each of
    FPIRS averaged over the galleries, and the CMC (rank k: its identification rate)."""
    probes, probe_ids = pool(features, meta.templates, meta.medias, meta.probes[0])
    probe_subjects = _subjects(probe_ids, *meta.probes)
    all_ranks, tpirs = [], {f"{fpir:.0e}": [] for fpir in FPIRS}
    largest = 0
    for templates, subjects in meta.galleries.values():
        gallery, gallery_ids = pool(features, meta.templates, meta.medias, templates)
        ranks, correct, mated, non_mated = _search(
            probes, probe_subjects, gallery, _subjects(gallery_ids, templates, subjects))
        all_ranks.append(ranks)
        largest = max(largest, len(gallery_ids))
        for fpir in FPIRS:
            if not len(non_mated) or not len(mated):
                tpirs[f"{fpir:.0e}"].append(None)
                continue
            threshold = non_mated[max(int(len(non_mated) * fpir) - 1, 0)]
            tpirs[f"{fpir:.0e}"].append(float(np.sum(correct & (mated > threshold))
                                              / len(mated)))
    ranks = np.concatenate(all_ranks)
    rate = lambda k: float(np.mean(ranks <= k)) if len(ranks) else None
    return {"probes": int(len(probe_ids)), "mated_searches": int(len(ranks)),
            "rank": {str(k): rate(k) for k in RANKS},
            "tpir@fpir": {key: None if None in values else float(np.mean(values))
                          for key, values in tpirs.items()},
            "cmc": [rate(k) for k in range(1, largest + 1)]}


def _subjects(ids, templates, subjects):
    """The subject of each template id in `ids`, from rows of (templates, subjects)."""
    first = {}
    for template, subject in zip(templates, subjects):
        first.setdefault(int(template), int(subject))
    return np.array([first[int(t)] for t in ids], np.int64)
