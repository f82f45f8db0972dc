"""Face verification figures from pair scores: does a pair show one person or two?

The LFW protocol: 10-fold accuracy, each fold scored at the threshold chosen on the other
nine (never on itself); the ROC's area (AUC), the equal error rate (EER), and two true
accept rates at fixed false accept rates, each under its own name:

- `verify_tar@far=F`, pooled: the ROC of every pair at once, at the loosest threshold whose
  false accepts are at most F x impostors (exactly F counts). Reported only where the impostor
  pairs can resolve F: at least `MIN_FALSE_ACCEPTS` of them may be accepted at that rate
  (impostors x F >= 10), else the figure would rest on a handful of pairs.
- `verify_val@far=F`, the protocol published tables report (facenet's and insightface's
  `calculate_val`, "VAL@FAR"): per fold, the squared distance of the unit embeddings
  (2 - 2 cos) is thresholded on a grid of step `VAL_GRID_STEP` over [0, 4); the threshold is
  interpolated, linearly, to where the other nine folds' FAR reaches F (0 when it never
  does), and the fold's own true accept rate is taken there; the rate is averaged over the
  folds (`_std` its spread, `verify_val_far@far=F` the FAR the folds actually got).
"""

import numpy as np

from kerasbn.utils import errors

MIN_FALSE_ACCEPTS = 10
FARS = (1e-2, 1e-3)
VAL_GRID_STEP = 0.001


def require_both_kinds(same, where):
    """Raises DataError naming `where` unless the pairs hold matched and mismatched ones:
    with one kind alone every threshold is right, so accuracy would read 1 and AUC nan."""
    matched = int(np.sum(same))
    if not matched or matched == len(same):
        raise errors.DataError(f"{where} holds {matched} matched and {len(same) - matched} "
                               "mismatched pairs; verification needs both kinds")


def cosine_scores(embeddings, first, second):
    """Cosine similarity of the embedding rows `first[i]` and `second[i]` for each pair."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return np.sum(unit[first] * unit[second], axis=1)


def stratified_folds(is_same, k=10, seed=0):
    """A fold index per pair: matched and mismatched pairs each dealt over the k folds, so
    every fold holds both kinds (when each kind has at least k pairs)."""
    is_same = np.asarray(is_same, bool)
    fold = np.empty(len(is_same), int)
    rng = np.random.default_rng(seed)
    for kind in (True, False):
        members = np.flatnonzero(is_same == kind)
        fold[rng.permutation(members)] = np.arange(len(members)) % k
    return fold


def _best_threshold(scores, is_same):
    """The threshold (accept when score > it) with the highest accuracy on these pairs."""
    order = np.argsort(scores)
    ordered, same = scores[order], is_same[order]
    # Accepting everything above position i: the mismatched at or below i are right, and
    # the matched above it.
    rejected_right = np.concatenate([[0], np.cumsum(~same)])
    accepted_right = same.sum() - np.concatenate([[0], np.cumsum(same)])
    correct = rejected_right + accepted_right
    edges = np.concatenate([[ordered[0] - 1.0], ordered])
    # Only cuts between distinct scores: a threshold cannot split a tie.
    valid = np.concatenate([[True], np.append(ordered[1:] != ordered[:-1], True)])
    best = np.flatnonzero(valid)[np.argmax(correct[valid])]
    return edges[best] if best == 0 or best == len(ordered) else (
        (ordered[best - 1] + ordered[best]) / 2.0)


def kfold_accuracy(scores, is_same, fold):
    """(mean, std, thresholds) of the accuracy on each fold at the threshold that is best on
    the other folds."""
    scores, is_same, fold = np.asarray(scores, float), np.asarray(is_same, bool), np.asarray(fold)
    accuracies, thresholds = [], []
    for k in np.unique(fold):
        test = fold == k
        threshold = _best_threshold(scores[~test], is_same[~test])
        accuracies.append(np.mean((scores[test] > threshold) == is_same[test]))
        thresholds.append(threshold)
    return float(np.mean(accuracies)), float(np.std(accuracies)), thresholds


def roc(scores, is_same):
    """(false accept rates, true accept rates, thresholds), accepting scores >= threshold,
    from the strictest threshold to the loosest."""
    scores, is_same = np.asarray(scores, float), np.asarray(is_same, bool)
    thresholds = np.unique(scores)[::-1]
    genuine, impostor = np.sort(scores[is_same]), np.sort(scores[~is_same])
    # Counted, then divided once: 1 - (n - fa) / n rounds exactly F x n false accepts above F.
    tar = (len(genuine) - np.searchsorted(genuine, thresholds, side="left")) / max(
        len(genuine), 1)
    far = (len(impostor) - np.searchsorted(impostor, thresholds, side="left")) / max(
        len(impostor), 1)
    return np.concatenate([[0.0], far]), np.concatenate([[0.0], tar]), thresholds


def auc(scores, is_same):
    """Area under the ROC: the chance a matched pair outscores a mismatched one (ties half)."""
    scores, is_same = np.asarray(scores, float), np.asarray(is_same, bool)
    genuine, impostor = scores[is_same], np.sort(scores[~is_same])
    below = np.searchsorted(impostor, genuine, side="left")
    ties = np.searchsorted(impostor, genuine, side="right") - below
    return float(np.sum(below + 0.5 * ties) / (len(genuine) * len(impostor)))


def eer(scores, is_same):
    """The equal error rate: where the false accept rate meets the false reject rate."""
    far, tar, _ = roc(scores, is_same)
    frr = 1.0 - tar
    i = np.flatnonzero(far >= frr)[0]
    if i == 0:
        return float(far[0])
    # Linear between the two ROC points around the crossing.
    d0, d1 = frr[i - 1] - far[i - 1], frr[i] - far[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def tar_at_far(scores, is_same, far):
    """The true accept rate at the loosest threshold whose false accept rate is <= `far`;
    None when the impostor pairs cannot resolve `far` (fewer than MIN_FALSE_ACCEPTS / far)."""
    impostors = int(np.sum(~np.asarray(is_same, bool)))
    if impostors * far < MIN_FALSE_ACCEPTS:
        return None
    fars, tars, _ = roc(scores, is_same)
    return float(tars[np.flatnonzero(fars <= far)[-1]])


def threshold_at_far(scores, is_same, far):
    """(threshold, false accept rate reached, true accept rate there) of the loosest
    threshold whose false accept rate is at most `far`, accepting scores >= it; the threshold
    is a float32 value just above the first impostor score it must refuse, so float32 scores
    compare with it as they were counted."""
    scores, is_same = np.asarray(scores, np.float32), np.asarray(is_same, bool)
    require_both_kinds(is_same, "the pairs a threshold is chosen on")
    impostor = np.sort(scores[~is_same])[::-1]
    allowed = min(int(np.floor(far * len(impostor) + 1e-9)), len(impostor) - 1)
    threshold = np.nextafter(impostor[allowed], np.float32(np.inf))
    return (float(threshold), float(np.mean(scores[~is_same] >= threshold)),
            float(np.mean(scores[is_same] >= threshold)))


def _val_far(distances, is_same, thresholds):
    """(true accept rate, false accept rate) of accepting distance < each threshold."""
    genuine, impostor = np.sort(distances[is_same]), np.sort(distances[~is_same])
    accepted = lambda d: np.searchsorted(d, thresholds, side="left") / max(len(d), 1)
    return accepted(genuine), accepted(impostor)


def kfold_val(scores, is_same, fold, far):
    """(mean, std, mean FAR reached) over the folds of `calculate_val`'s validation rate at
    false accept rate `far` (the module's docstring says how)."""
    distances = 2.0 - 2.0 * np.asarray(scores, float)
    is_same, fold = np.asarray(is_same, bool), np.asarray(fold)
    grid = np.arange(0.0, 4.0, VAL_GRID_STEP)
    rates, reached = [], []
    for k in np.unique(fold):
        test = fold == k
        _, train_far = _val_far(distances[~test], is_same[~test], grid)
        # calculate_val interpolates with scipy's interp1d(kind="slinear"), which current
        # scipy refuses for these repeated FARs (insightface issue 2152); np.interp takes
        # the loosest grid point whose FAR is at most `far` and interpolates to the next.
        threshold = float(np.interp(far, train_far, grid)) if train_far.max() >= far else 0.0
        val, got = _val_far(distances[test], is_same[test], np.array([threshold]))
        rates.append(val[0])
        reached.append(got[0])
    return float(np.mean(rates)), float(np.std(rates)), float(np.mean(reached))


def summarize(scores, is_same, fold):
    """Every figure of one verification run, JSON-ready."""
    is_same = np.asarray(is_same, bool)
    accuracy, spread, thresholds = kfold_accuracy(scores, is_same, fold)
    result = {"verify_acc": accuracy, "verify_acc_std": spread,
              "verify_threshold": float(np.mean(thresholds)),
              "verify_auc": auc(scores, is_same), "verify_eer": eer(scores, is_same),
              "verify_pairs": {"matched": int(is_same.sum()),
                               "mismatched": int((~is_same).sum())}}
    for far in FARS:
        result[f"verify_tar@far={far:g}"] = tar_at_far(scores, is_same, far)
        val, val_std, reached = kfold_val(scores, is_same, fold, far)
        result.update({f"verify_val@far={far:g}": val, f"verify_val@far={far:g}_std": val_std,
                       f"verify_val_far@far={far:g}": reached})
    return result
