"""Verification on the holdout split (identities never trained on): embed each holdout image
once, score the dataset's pairs by cosine similarity, report the LFW figures.

With `flip`, each image's embedding is summed with its mirror image's, as insightface does;
each is L2-normalised first, so a network (training's verifier) and its export (which
serves normalised embeddings) give the same scores.
"""

import keras
import numpy as np
import tensorflow as tf

from kerasbn.data import pipeline
from kerasbn.evaluation import pairs, verification


def folds(same, sets):
    """The pairs file's own ten sets as the folds (LFW's protocol), else stratified folds."""
    return sets if len(np.unique(sets)) == 10 else verification.stratified_folds(same)


def embed_step(embed, flip=False):
    """A compiled function: a batch of images -> float32 embeddings by `embed` (images ->
    features), summed with the mirror images' when `flip`: "unit" (or True) sums the two
    L2-normalised embeddings, "raw" the raw ones, as insightface's verification.py does
    (the scores normalise what they are given)."""
    view = (lambda images: tf.cast(embed(images), tf.float32)) if flip == "raw" else (
        lambda images: tf.math.l2_normalize(tf.cast(embed(images), tf.float32), axis=-1,
                                            epsilon=1e-24))

    @tf.function(reduce_retracing=True)
    def step(images):
        features = view(images)
        if flip:
            features += view(tf.reverse(images, axis=[2]))
        return features

    return step


def model_embedding(model):
    """The training network's embedding layer as a function of normalised images."""
    embed = keras.Model(model.inputs, model.get_layer("embedding").output)
    return lambda images: embed(images, training=False)


def embedder(embed, data_dir, manifest, batch_size, flip=False, raw=False, progress=None):
    """A function returning the embedding of every holdout record (manifest order) now;
    `raw` feeds `embed` the stored uint8 images instead of normalised ones, and `progress`
    (a `Progress`) counts the images embedded."""
    data = pipeline.test_dataset(data_dir, manifest, batch_size, split="holdout", raw=raw)
    step = embed_step(embed, flip)
    return lambda: embed_batches(step, (images for images, _ in data), progress)


def embed_batches(step, batches, progress=None):
    """The embeddings `step` gives each batch of images, as one array; `progress` (a
    `Progress`) counts the images."""
    embeddings = []
    for images in batches:
        embeddings.append(step(images).numpy())
        if progress:
            progress.update(len(embeddings[-1]))
    return np.concatenate(embeddings)


def scorer(embed, data_dir, manifest, batch_size, flip=False, raw=False, progress=None):
    """A function returning (cosine score of each pair, matched or not, fold) now, over the
    dataset's holdout pairs; arguments as `embedder`'s."""
    first, second, same, sets = pairs.holdout_pairs(data_dir, manifest)
    fold = folds(same, sets)
    embed_all = embedder(embed, data_dir, manifest, batch_size, flip, raw, progress)
    return lambda: (verification.cosine_scores(embed_all(), first, second), same, fold)


def verifier(model, data_dir, manifest, batch_size, flip=False):
    """A function returning `verification.summarize`'s figures for the training `model` now."""
    score = scorer(model_embedding(model), data_dir, manifest, batch_size, flip)
    return lambda: verification.summarize(*score())
