"""Aligned face crops: each face's five landmarks carried onto the template by a similarity
transform, the photo warped into a crop of the size and channels a dataset or network takes."""

import numpy as np
import tensorflow as tf

from kerasbn.data import preprocess
from kerasbn.faces import similarity, template


def matrices(landmarks, height, width):
    """[N, 2, 3] similarity matrices carrying each face's landmarks [N, 5, 2] onto the
    template of a height x width crop."""
    return similarity.estimate(np.asarray(landmarks, np.float64),
                               template.template(height, width)).numpy()


def crops(photo, landmarks, height, width, channels):
    """uint8 crops [N, height, width, channels] of the faces with `landmarks` [N, 5, 2] in
    uint8 `photo` [H, W, 1 or 3]; gray as Pillow makes it (preprocess.to_channels)."""
    if not len(landmarks):
        return np.zeros((0, height, width, channels), np.uint8)
    images = np.repeat(photo[None], len(landmarks), axis=0)
    warped = similarity.warp(images, matrices(landmarks, height, width), height, width)
    warped = tf.cast(tf.clip_by_value(tf.round(warped), 0.0, 255.0), tf.uint8)
    return tf.cast(preprocess.to_channels(warped, channels), tf.uint8).numpy()
