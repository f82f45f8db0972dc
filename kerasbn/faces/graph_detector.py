"""MTCNN as TensorFlow ops, so a SavedModel finds faces with nothing but TensorFlow (and the
Python path, kerasbn.faces.detector, runs the same graph): the
`mtcnn` package's three networks (their weights taken from its wheel when the graph is
built) and its pipeline, step for step as its stages run it (mtcnn 1.0.0): the image
pyramid (AREA resizing, scale factor 0.709 from 12 / min_face_size), PNet's cells at stride
2 and their regression, its non-maximum suppression (a box is kept when no box of
higher score overlaps it beyond the threshold, suppressed or not), squared boxes, RNet's
24x24 and ONet's 48x48 crops (crop_and_resize), their regression and landmarks, ONet's
suppression by the smaller box's area, and boxes clipped to the photo.

tests/test_faces.py checks its boxes and landmarks against the package's detect_faces.
"""

import math

import tensorflow as tf

from kerasbn.faces import detector_defaults

# The package's defaults (mtcnn.MTCNN.detect_faces).
SCALE_FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.8)
NMS_PNET = (0.5, 0.7)
NMS_RNET = 0.7
NMS_ONET = 0.7
CELL, STRIDE = 12, 2


def networks():
    """(PNet, RNet, ONet) of the mtcnn package with its weights, for tracing into a graph;
    float32 whatever a mixed-precision run set as Keras's global policy."""
    import keras
    from mtcnn import MTCNN

    saved = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        return tuple(stage.model for stage in MTCNN().stages)
    finally:
        keras.mixed_precision.set_global_policy(saved)


class GraphDetector(tf.Module):
    """`detect(photo, min_face_size, min_confidence)` of uint8 [H, W, 3]: (boxes [N, 4] x, y,
    width, height, confidence [N], landmarks [N, 5, 2]), largest face first; faces below
    `min_confidence` dropped. A photo over `detector_defaults.MAX_PIXELS` is refused (an
    InvalidArgumentError naming the limit) before the pyramid is built."""

    def __init__(self, nets=None):
        super().__init__()
        self.networks = nets or networks()
        self.pnet, self.rnet, self.onet = self.networks

    def detect(self, photo, min_face_size=detector_defaults.MIN_FACE_SIZE,
               min_confidence=detector_defaults.MIN_CONFIDENCE):
        pixels = tf.cast(tf.shape(photo)[0], tf.int64) * tf.cast(tf.shape(photo)[1], tf.int64)
        limit = detector_defaults.MAX_PIXELS
        check = tf.debugging.Assert(pixels <= limit, [
            f"the photo is larger than {limit / 1e6:g} megapixels, which detection would need "
            "many GB for; downscale it. Its height and width:", tf.shape(photo)[:2]])
        with tf.control_dependencies([check]):
            image = (tf.cast(photo, tf.float32) - 127.5) / 128.0
        image = image[None]
        shape = tf.shape(image)
        height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        boxes = self._proposals(image, height, width, tf.cast(min_face_size, tf.float32))
        boxes = self._refine(image, boxes, height, width)
        boxes, landmarks = self._output(image, boxes, height, width)
        keep = boxes[:, 4] >= tf.cast(min_confidence, tf.float32)
        boxes, landmarks = tf.boolean_mask(boxes, keep), tf.boolean_mask(landmarks, keep)
        x1 = tf.clip_by_value(boxes[:, 0], 0.0, width - 1)
        y1 = tf.clip_by_value(boxes[:, 1], 0.0, height - 1)
        x2 = tf.clip_by_value(boxes[:, 2], 0.0, width - 1)
        y2 = tf.clip_by_value(boxes[:, 3], 0.0, height - 1)
        xywh = tf.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        order = tf.argsort(xywh[:, 2] * xywh[:, 3], direction="DESCENDING", stable=True)
        return (tf.gather(xywh, order), tf.gather(boxes[:, 4], order),
                tf.gather(landmarks, order))

    def _proposals(self, image, height, width, min_face_size):
        """PNet over the pyramid: [N, 5] boxes (x1, y1, x2, y2, score), squared."""
        smallest = tf.minimum(height, width)
        count = tf.cast(tf.round(-(tf.math.log(smallest / CELL) / math.log(SCALE_FACTOR) + 1)),
                        tf.int32)
        first = CELL / min_face_size
        found = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False,
                               element_shape=tf.TensorShape([None, 5]))

        def step(k, found):
            scale = first * SCALE_FACTOR ** tf.cast(k, tf.float32)
            size = tf.cast(tf.stack([height, width]) * scale, tf.int32)
            regression, classes = self.pnet(tf.image.resize(image, size, method="area"))
            score = classes[0, :, :, 1]
            where = tf.where(score > THRESHOLDS[0])
            y, x = tf.cast(where[:, 0], tf.float32), tf.cast(where[:, 1], tf.float32)
            offsets = tf.gather_nd(regression[0], where)
            # The package's cell runs from stride x index + 1 to stride x index + 12, so its
            # regression is in units of 11 pixels.
            span = CELL - 1.0
            boxes = tf.stack([x * STRIDE + 1 + offsets[:, 0] * span,
                              y * STRIDE + 1 + offsets[:, 1] * span,
                              x * STRIDE + CELL + offsets[:, 2] * span,
                              y * STRIDE + CELL + offsets[:, 3] * span], axis=1) / scale
            boxes = _by_score(tf.concat([boxes, tf.gather_nd(score, where)[:, None]], 1))
            return k + 1, found.write(k, _suppress(boxes, NMS_PNET[0], "union"))

        _, found = tf.while_loop(lambda k, _: k < count, step, [0, found])
        boxes = tf.cond(count > 0, lambda: found.concat(), lambda: tf.zeros([0, 5]))
        return _square(_suppress(_by_score(boxes), NMS_PNET[1], "union"))

    def _refine(self, image, boxes, height, width):
        """RNet on the proposals: the kept boxes, regressed, suppressed and squared."""
        def run():
            offsets, scores = self.rnet(_patches(image, boxes, height, width, 24))
            refined = _regress(tf.concat([boxes[:, :4], scores[:, -1:]], 1), offsets)
            refined = tf.boolean_mask(refined, refined[:, 4] > THRESHOLDS[1])
            return _square(_suppress(_by_score(refined), NMS_RNET, "union"))
        return tf.cond(tf.shape(boxes)[0] > 0, run, lambda: tf.zeros([0, 5]))

    def _output(self, image, boxes, height, width):
        """ONet on the refined boxes: ([N, 5] boxes, [N, 5, 2] landmarks)."""
        def run():
            offsets, points, scores = self.onet(_patches(image, boxes, height, width, 48))
            w = boxes[:, 2:3] - boxes[:, 0:1] + 1
            h = boxes[:, 3:4] - boxes[:, 1:2] + 1
            xs = w * points[:, 0:5] + boxes[:, 0:1] - 1
            ys = h * points[:, 5:10] + boxes[:, 1:2] - 1
            out = tf.concat([_regress(tf.concat([boxes[:, :4], scores[:, -1:]], 1), offsets),
                             xs, ys], 1)
            out = tf.boolean_mask(out, out[:, 4] > THRESHOLDS[2])
            out = _suppress(_by_score(out), NMS_ONET, "min")
            return out[:, :5], tf.stack([out[:, 5:10], out[:, 10:15]], axis=2)
        return tf.cond(tf.shape(boxes)[0] > 0, run,
                       lambda: (tf.zeros([0, 5]), tf.zeros([0, 5, 2])))


def _by_score(rows):
    """`rows` (score in column 4) sorted by descending score."""
    return tf.gather(rows, tf.argsort(rows[:, 4], direction="DESCENDING", stable=True))


def _suppress(rows, threshold, method):
    """The rows (sorted by score) that no earlier row overlaps beyond `threshold`, by
    intersection over union or over the smaller area (`method` "min")."""
    x1, y1, x2, y2 = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    area = (x2 - x1) * (y2 - y1)
    inter = (tf.maximum(0.0, tf.minimum(x2[:, None], x2[None]) - tf.maximum(x1[:, None],
                                                                           x1[None]))
             * tf.maximum(0.0, tf.minimum(y2[:, None], y2[None]) - tf.maximum(y1[:, None],
                                                                             y1[None])))
    if method == "union":
        overlap = inter / (area[:, None] + area[None] - inter)
    else:
        overlap = inter / tf.minimum(area[:, None], area[None])
    earlier = tf.linalg.band_part(tf.ones_like(overlap), 0, -1) - tf.linalg.band_part(
        tf.ones_like(overlap), 0, 0)
    beaten = tf.reduce_sum(tf.cast(overlap > threshold, tf.float32) * earlier, axis=0)
    return tf.boolean_mask(rows, beaten == 0)


def _square(rows):
    """Each box made square on its longer side, about its centre."""
    w, h = rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]
    side = tf.maximum(w, h)
    x1 = rows[:, 0] + w * 0.5 - side * 0.5
    y1 = rows[:, 1] + h * 0.5 - side * 0.5
    return tf.concat([tf.stack([x1, y1, x1 + side, y1 + side], 1), rows[:, 4:]], 1)


def _regress(rows, offsets):
    """Boxes moved by the network's offsets, in units of the box's (inclusive) size."""
    w = rows[:, 2] - rows[:, 0] + 1
    h = rows[:, 3] - rows[:, 1] + 1
    return tf.concat([rows[:, :4] + offsets * tf.stack([w, h, w, h], 1), rows[:, 4:]], 1)


def _patches(image, rows, height, width, size):
    """The boxes' crops resized to size x size (coordinates over the photo's size, as the
    package passes them to crop_and_resize)."""
    boxes = tf.stack([rows[:, 1] / height, rows[:, 0] / width, rows[:, 3] / height,
                      rows[:, 2] / width], axis=1)
    return tf.image.crop_and_resize(image, boxes, tf.zeros(tf.shape(rows)[:1], tf.int32),
                                    [size, size])
