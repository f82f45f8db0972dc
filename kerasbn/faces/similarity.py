"""The similarity transform (rotation, uniform scale, translation) that carries a face's five
landmarks onto the template, and the warp that applies it.

`estimate` is Umeyama's least-squares similarity (1991), what scikit-image's
SimilarityTransform.estimate and insightface's norm_crop compute; `warp` is TensorFlow's own
projective image transform, bilinear with black outside the photo, as OpenCV's warpAffine
makes insightface's crops. Both are tested against those libraries (tests/test_faces.py);
the same warp runs inside a graph, so a served network aligns as its data was aligned.
"""

import numpy as np
import tensorflow as tf


def estimate(source, target):
    """The 2x3 matrix M of the similarity best mapping `source` points [N, 2] onto `target`
    [N, 2] in least squares (Umeyama): target ~ M @ [x, y, 1]."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    s, t = source - mean_s, target - mean_t
    covariance = t.T @ s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(covariance) < 0:
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / s.var(0).sum()
    shift = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, shift[:, None]])


def apply(matrix, points):
    """`points` [N, 2] carried by the 2x3 `matrix`."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(images, matrices, height, width):
    """uint8 or float images [N, H, W, C] warped by 2x3 `matrices` [N, 2, 3] (photo -> crop)
    into float32 crops [N, height, width, C]: each crop pixel (x, y) samples the photo
    bilinearly at M^-1 (x, y), black outside."""
    matrices = tf.convert_to_tensor(matrices, tf.float64)
    linear, shift = matrices[:, :, :2], matrices[:, :, 2:]
    inverse = tf.linalg.inv(linear)
    back = -tf.matmul(inverse, shift)
    # TensorFlow's transform maps output to input: [a0 a1 a2 b0 b1 b2 0 0].
    transforms = tf.concat([tf.reshape(tf.concat([inverse, back], 2), [-1, 6]),
                            tf.zeros([tf.shape(matrices)[0], 2], tf.float64)], 1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=tf.cast(transforms, tf.float32),
        output_shape=tf.constant([height, width], tf.int32), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")
