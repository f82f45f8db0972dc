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


def test_exactly_far_times_n_false_accepts_is_within_far():
    # 3,000 impostors, 30 of them (1e-2 exactly) above every genuine score but one group:
    # accepting >= 0.5 takes 30 false accepts, FAR 30/3000 = 0.01, and all 100 genuine.
    impostor = np.concatenate([np.full(30, 0.6), np.linspace(0.0, 0.3, 2970)])
    genuine = np.concatenate([np.full(60, 0.9), np.full(40, 0.5)])
    scores = np.concatenate([genuine, impostor])
    is_same = np.arange(len(scores)) < 100
    assert verification.tar_at_far(scores, is_same, 1e-2) == 1.0
    # One more false accept at 0.5 pushes it past: the loosest threshold within is 0.6.
    impostor[30] = 0.5
    scores = np.concatenate([genuine, impostor])
    assert verification.tar_at_far(scores, is_same, 1e-2) == 0.6


def _distance_pairs(genuine, impostor):
    """(cosine scores, same flags) of pairs given by the squared distance of their unit
    embeddings (2 - 2 cos)."""
    distances = np.array(genuine + impostor)
    return 1.0 - distances / 2.0, np.array([True] * len(genuine) + [False] * len(impostor))


def test_val_at_far_follows_calculate_val_by_hand():
    # Fold 0's threshold comes from fold 1's impostors (0.5, 1.0, 1.5, 2.0): FAR 1/4 up to
    # 1.0, 1/2 from 1.001, so FAR 0.3 interpolates to 1.0 + 0.2 x 0.001; fold 0's genuine
    # 0.2 and 0.9 are accepted, 1.1 is not, and no impostor (3.0+). Fold 1's comes from fold
    # 0's impostors (FAR 1/4 up to 3.5): 3.5002 accepts all of fold 1, impostors too.
    s0, same0 = _distance_pairs([0.2, 0.9, 1.1], [3.0, 3.5, 3.6, 3.9])
    s1, same1 = _distance_pairs([0.1, 0.3, 0.7], [0.5, 1.0, 1.5, 2.0])
    scores, is_same = np.concatenate([s0, s1]), np.concatenate([same0, same1])
    fold = np.array([0] * 7 + [1] * 7)
    val, spread, reached = verification.kfold_val(scores, is_same, fold, 0.3)
    assert val == pytest.approx((2 / 3 + 1.0) / 2) and spread == pytest.approx(1 / 6)
    assert reached == pytest.approx((0.0 + 1.0) / 2)


def test_val_at_far_thresholds_at_zero_where_the_far_is_never_reached():
    # Impostors at distance 4 (opposite embeddings) are beyond the grid's last point 3.999:
    # the other folds never reach the FAR, so calculate_val's threshold 0 accepts nothing.
    scores, is_same = _distance_pairs([0.1, 0.2] * 10, [4.0, 4.0] * 10)
    fold = np.concatenate([np.arange(10)] * 4)
    assert verification.kfold_val(scores, is_same, fold, 1e-3) == (0.0, 0.0, 0.0)
    figures = verification.summarize(scores, is_same, fold)
    assert figures["verify_val@far=0.001"] == 0.0 and figures["verify_acc"] == 1.0


@pytest.mark.parametrize("same", [[True] * 4, [False] * 4])
def test_pairs_of_one_kind_are_refused(same):
    with pytest.raises(verification.errors.DataError, match="needs both kinds"):
        verification.require_both_kinds(np.array(same), "set.bin")


@pytest.mark.parametrize("flip", ["unit", "raw"])
def test_flip_sums_the_two_views_as_named(flip):
    import tensorflow as tf

    from kerasbn.evaluation import holdout

    images = np.random.default_rng(0).random((3, 4, 5, 1)).astype(np.float32)
    # A toy embedding whose two views differ in length: "unit" weighs them equally,
    # "raw" (insightface's) by their lengths.
    embed = lambda x: tf.reshape(x, [tf.shape(x)[0], -1]) * tf.reshape(
        tf.range(1, 21, dtype=tf.float32), [1, 20])
    got = holdout.embed_step(embed, flip)(tf.constant(images)).numpy()
    one = images.reshape(3, -1) * np.arange(1, 21)
    mirrored = images[:, :, ::-1].reshape(3, -1) * np.arange(1, 21)
    if flip == "unit":
        unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
        want = unit(one) + unit(mirrored)
    else:
        want = one + mirrored
    np.testing.assert_allclose(got, want, rtol=1e-5)
