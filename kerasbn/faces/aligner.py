"""Aligned face crops, the one alignment every path runs: `align`, `build_records --align`,
`predict --align`, `evaluate --align` (through `photo_alignment`) and an export's
`serve_photo` (inside its graph). Each face's five landmarks are carried onto the template by
a similarity transform and the photo warped into a crop of the size and channels a dataset
or network takes, rounded to uint8, gray as Pillow makes it (preprocess.to_channels)."""

import numpy as np
import tensorflow as tf

from kerasbn.data import preprocess
from kerasbn.faces import similarity, template


def matrices(landmarks, height, width):
    """[N, 2, 3] similarity matrices carrying each face's landmarks [N, 5, 2] onto the
    template of a height x width crop."""
    return similarity.estimate(tf.cast(landmarks, tf.float64), template.template(height, width))


def align(photo, landmarks, height, width, channels):
    """uint8 crops [N, height, width, channels] of the faces with `landmarks` [N, 5, 2] in
    uint8 `photo` [H, W, 1 or 3], as TensorFlow ops (eager, or traced into a SavedModel);
    N must be at least 1."""
    photo = tf.convert_to_tensor(photo, tf.uint8)
    images = tf.repeat(photo[None], tf.shape(landmarks)[0], axis=0)
    warped = similarity.warp(images, matrices(landmarks, height, width), height, width)
    warped = tf.cast(tf.clip_by_value(tf.round(warped), 0.0, 255.0), tf.uint8)
    return tf.cast(preprocess.to_channels(warped, channels), tf.uint8)


def crops(photo, landmarks, height, width, channels):
    """`align` as a numpy array, [0, height, width, channels] for no landmarks."""
    if not len(landmarks):
        return np.zeros((0, height, width, channels), np.uint8)
    return align(photo, np.asarray(landmarks, np.float64), height, width, channels).numpy()
