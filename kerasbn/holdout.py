"""Verification on the holdout split (identities never trained on) while training: embed each
holdout image once, score the dataset's pairs by cosine similarity, report the LFW figures.

With `flip`, each embedding is summed with its mirror image's, as insightface does.
"""

import keras
import numpy as np
import tensorflow as tf

from kerasbn import pairs, pipeline, verification


def available(manifest):
    """Whether the dataset has a holdout split and a pairs file to verify on."""
    return "holdout" in manifest["splits"] and "pairs" in manifest


def _folds(same, sets):
    """The pairs file's own ten sets as the folds (LFW's protocol), else stratified folds."""
    return sets if len(np.unique(sets)) == 10 else verification.stratified_folds(same)


def embedder(model, data_dir, manifest, batch_size, flip=False):
    """A function returning the embedding of every holdout record (manifest order) now."""
    data = pipeline.test_dataset(data_dir, manifest, batch_size, split="holdout")
    embed = keras.Model(model.inputs, model.get_layer("embedding").output)

    @tf.function(reduce_retracing=True)
    def step(images):
        features = tf.cast(embed(images, training=False), tf.float32)
        if flip:
            features += tf.cast(embed(tf.reverse(images, axis=[2]), training=False),
                                tf.float32)
        return features

    return lambda: np.concatenate([step(images).numpy() for images, _ in data])


def scorer(model, data_dir, manifest, batch_size, flip=False):
    """A function returning (cosine score of each pair, matched or not, fold) for `model`
    now, over the dataset's holdout pairs."""
    first, second, same, sets = pairs.holdout_pairs(data_dir, manifest)
    fold = _folds(same, sets)
    embed = embedder(model, data_dir, manifest, batch_size, flip)
    return lambda: (verification.cosine_scores(embed(), first, second), same, fold)


def make_verifier(model, data_dir, manifest, batch_size, flip=False):
    """A function returning `verification.summarize`'s figures for `model` now."""
    score = scorer(model, data_dir, manifest, batch_size, flip)
    return lambda: verification.summarize(*score())
