"""Verification figures against hand-computed answers."""

import numpy as np
import pytest

from kerasbn.evaluation import verification


def test_cosine_scores_against_a_hand_computation():
    embeddings = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    scores = verification.cosine_scores(embeddings, np.array([0, 0, 2]), np.array([1, 2, 2]))
    np.testing.assert_allclose(scores, [0.0, np.sqrt(0.5), 1.0])


def test_separable_scores_give_accuracy_1_auc_1_and_eer_0():
    is_same = np.array([True] * 50 + [False] * 2000)
    scores = np.where(is_same, 0.9, 0.1) + np.random.default_rng(0).uniform(-0.05, 0.05, 2050)
    fold = verification.stratified_folds(is_same)
    figures = verification.summarize(scores, is_same, fold)
    assert figures["verify_acc"] == 1.0 and figures["verify_auc"] == 1.0
    assert figures["verify_eer"] == 0.0
    assert figures["verify_tar@far=0.01"] == 1.0  # 2,000 impostors resolve 1e-2 ...
    assert figures["verify_tar@far=0.001"] is None  # ... but not 1e-3 (2 false accepts)


def test_random_scores_are_about_chance():
    rng = np.random.default_rng(1)
    is_same = rng.random(4000) < 0.5
    scores = rng.random(4000)
    figures = verification.summarize(scores, is_same, verification.stratified_folds(is_same))
    assert abs(figures["verify_acc"] - 0.5) < 0.03 and abs(figures["verify_auc"] - 0.5) < 0.03
    assert abs(figures["verify_eer"] - 0.5) < 0.03


def test_auc_counts_ties_half_and_eer_against_hand_computations():
    # Matched 0.8, 0.4; mismatched 0.4, 0.2: pairs (0.8>0.4, 0.8>0.2, 0.4=0.4, 0.4>0.2).
    scores, is_same = np.array([0.8, 0.4, 0.4, 0.2]), np.array([True, True, False, False])
    assert verification.auc(scores, is_same) == pytest.approx(3.5 / 4)
    # Accepting >= 0.4: FAR 1/2, FRR 0; >= 0.8: FAR 0, FRR 1/2. They meet at 1/4.
    assert verification.eer(scores, is_same) == pytest.approx(0.25)


def test_the_threshold_is_never_chosen_on_the_fold_it_scores():
    # Folds 1..9: matched at 0.6, mismatched at 0.4 -> threshold 0.5. Fold 0 alone would be
    # perfect at 0.75 (matched 0.8, mismatched 0.7), but at 0.5 its mismatched pair is wrong.
    scores = [0.8, 0.7] + [0.6, 0.4] * 9
    is_same = [True, False] + [True, False] * 9
    fold = [0, 0] + [k for k in range(1, 10) for _ in range(2)]
    mean, _, thresholds = verification.kfold_accuracy(scores, is_same, fold)
    assert thresholds[0] == pytest.approx(0.5)
    assert mean == pytest.approx((0.5 + 9 * 1.0) / 10)


def test_stratified_folds_each_hold_both_kinds():
    is_same = np.array([True] * 30 + [False] * 95)
    fold = verification.stratified_folds(is_same, k=10, seed=3)
    for k in range(10):
        assert is_same[fold == k].any() and (~is_same[fold == k]).any()
    assert np.bincount(fold[~is_same]).tolist() == [10] * 5 + [9] * 5
