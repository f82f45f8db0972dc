"""The similarity transform (rotation, uniform scale, translation) that carries a face's five
landmarks onto the template, and the warp that applies it.

`estimate` is Umeyama's least-squares similarity (1991), what scikit-image's
SimilarityTransform and insightface's norm_crop compute; `warp` is TensorFlow's own
projective image transform, bilinear with black outside the photo, as OpenCV's warpAffine
makes insightface's crops. Both are tested against those libraries (tests/test_faces.py);
the same warp runs inside a graph, so a served network aligns as its data was aligned.
"""

import tensorflow as tf


def estimate(source, target):
    """The 2x3 matrices M [..., 2, 3] of the similarities best mapping `source` points
    [..., N, 2] onto `target` [N, 2] in least squares (Umeyama): target ~ M @ [x, y, 1].
    TensorFlow ops in float64, so the same code runs eagerly and inside a SavedModel."""
    source = tf.cast(source, tf.float64)
    target = tf.broadcast_to(tf.cast(target, tf.float64), tf.shape(source))
    mean_s = tf.reduce_mean(source, -2, keepdims=True)
    mean_t = tf.reduce_mean(target, -2, keepdims=True)
    s, t = source - mean_s, target - mean_t
    count = tf.cast(tf.shape(source)[-2], tf.float64)
    covariance = tf.matmul(t, s, transpose_a=True) / count
    singular, u, v = tf.linalg.svd(covariance)
    flip = tf.where(tf.linalg.det(covariance) < 0, tf.constant(-1.0, tf.float64),
                    tf.constant(1.0, tf.float64))
    sign = tf.stack([tf.ones_like(flip), flip], -1)
    rotation = tf.matmul(u * sign[..., None, :], v, transpose_b=True)
    variance = tf.reduce_sum(tf.reduce_mean(s * s, -2), -1)
    scale = tf.reduce_sum(singular * sign, -1) / variance
    shift = mean_t[..., 0, :] - scale[..., None] * tf.linalg.matvec(rotation,
                                                                     mean_s[..., 0, :])
    return tf.concat([scale[..., None, None] * rotation, shift[..., :, None]], -1)


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
