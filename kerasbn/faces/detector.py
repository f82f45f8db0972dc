"""Faces found in a photo by MTCNN (Zhang et al. 2016), as the `mtcnn` package (MIT licence,
its networks' weights inside its wheel, so nothing is downloaded) detects them, run as the
graph a SavedModel's serve_photo runs (kerasbn.faces.graph_detector): a box, a confidence and
five landmarks (the template's order, kerasbn.faces.template.LANDMARKS).

MTCNN finds upright faces from about `min_face_size` pixels up; faces turned more than about
45 degrees in the image plane, or seen in profile, are often missed or get poor landmarks.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from kerasbn.faces import detector_defaults, graph_detector

# PNet's window: a photo smaller than this cannot hold a face MTCNN finds.
SMALLEST_PHOTO = 12
_detect = None


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face: `box` (x, y, width, height) in pixels, `confidence` in [0, 1],
    `landmarks` [5, 2] (x, y) in the photo."""

    box: tuple
    confidence: float
    landmarks: np.ndarray

    @property
    def area(self):
        return self.box[2] * self.box[3]

    def to_dict(self):
        return {"box": [round(float(v), 2) for v in self.box],
                "confidence": round(float(self.confidence), 5),
                "landmarks": [[round(float(x), 2), round(float(y), 2)]
                              for x, y in self.landmarks]}


def graph():
    """(the process's `GraphDetector`, its compiled `detect`), built once per process: its
    networks load and its graph is traced once, however many photos are detected and exports
    written (an export calls the same function inside its serve_photo)."""
    global _detect
    if _detect is None:
        module = graph_detector.GraphDetector()
        _detect = module, tf.function(module.detect, input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.float32),
            tf.TensorSpec([], tf.float32)])
    return _detect


def too_small(photo):
    """Why uint8 `photo` [H, W, C] cannot hold a face MTCNN finds, or None."""
    if min(photo.shape[:2]) < SMALLEST_PHOTO:
        return f"smaller than {SMALLEST_PHOTO} px"
    return None


def too_large(photo):
    """Why uint8 `photo` [H, W, C] is refused by the detector (over MAX_PIXELS), or None."""
    height, width = photo.shape[:2]
    if height * width > detector_defaults.MAX_PIXELS:
        return (f"larger than {detector_defaults.MAX_PIXELS / 1e6:g} megapixels ({width}x"
                f"{height}), which detection would need many GB for; downscale it")
    return None


def detect(photo, min_face_size=detector_defaults.MIN_FACE_SIZE,
           min_confidence=detector_defaults.MIN_CONFIDENCE):
    """[Face] in uint8 `photo` [H, W, 1 or 3], largest first; [] for none (or a photo
    smaller than SMALLEST_PHOTO); a ValueError for one over MAX_PIXELS."""
    if too_large(photo):
        raise ValueError(too_large(photo))
    if too_small(photo):
        return []
    rgb = np.repeat(photo, 3, axis=2) if photo.shape[2] == 1 else photo
    boxes, confidence, landmarks = graph()[1](rgb, float(min_face_size),
                                               float(min_confidence))
    return [Face(tuple(float(v) for v in box), float(score), points)
            for box, score, points in zip(boxes.numpy(), confidence.numpy(),
                                          landmarks.numpy().astype(np.float64))]
