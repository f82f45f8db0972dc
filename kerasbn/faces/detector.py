"""Faces found in a photo by MTCNN (Zhang et al. 2016), as the `mtcnn` package (MIT licence,
its networks' weights inside its wheel, so nothing is downloaded) detects them: a box, a
confidence and five landmarks (the template's order, kerasbn.faces.template.LANDMARKS).

MTCNN finds upright faces from about `min_face_size` pixels up; faces turned more than about
45 degrees in the image plane, or seen in profile, are often missed or get poor landmarks.
"""

import dataclasses

import numpy as np

MIN_FACE_SIZE = 20
MIN_CONFIDENCE = 0.9
# PNet's window: a photo smaller than this cannot hold a face MTCNN finds.
SMALLEST_PHOTO = 12
_detector = None


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


def _mtcnn():
    """The package's detector, built once per process (its three networks load here)."""
    global _detector
    if _detector is None:
        from mtcnn import MTCNN
        _detector = MTCNN()
    return _detector


def detect(photo, min_face_size=MIN_FACE_SIZE, min_confidence=MIN_CONFIDENCE):
    """[Face] in uint8 `photo` [H, W, 1 or 3], largest first; [] for none (or a photo
    smaller than SMALLEST_PHOTO)."""
    if min(photo.shape[:2]) < SMALLEST_PHOTO:
        return []
    rgb = np.repeat(photo, 3, axis=2) if photo.shape[2] == 1 else photo
    found = _mtcnn().detect_faces(rgb, min_face_size=min_face_size, output_type="numpy",
                                  box_format="xyxy")
    faces = []
    # Each row: image index, x1, y1, x2, y2, confidence, then the five x and the five y.
    for row in np.asarray(found, np.float64):
        if row[5] < min_confidence:
            continue
        faces.append(Face((row[1], row[2], row[3] - row[1], row[4] - row[2]), row[5],
                          np.stack([row[6:11], row[11:16]], axis=1)))
    return sorted(faces, key=lambda face: -face.area)
