"""One photo file made into aligned face crops, with what was found: what `python -m
kerasbn.align`, `build_records --align` (and `--landmarks`) and `evaluate --align` do to each
photo (`predict --align` runs an export's serve_photo). The crops are `aligner.align`'s,
the faces the detector graph's, the same two an export's serve_photo runs."""

import dataclasses

import numpy as np

from kerasbn.data import images
from kerasbn.faces import aligner, detector, detector_defaults

KEEP = ("largest", "all")
# Why a photo gave no crop when it holds no face MTCNN finds (build_records counts them).
NO_FACE = "no face found"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How photos are aligned: the crop's `height`, `width` and `channels`, which faces are
    kept (`keep`: largest or all) and the detector's limits."""

    height: int = 112
    width: int = 112
    channels: int = 3
    keep: str = "largest"
    min_confidence: float = detector_defaults.MIN_CONFIDENCE
    min_face_size: int = detector_defaults.MIN_FACE_SIZE


def align_photo(path, settings, landmarks=None):
    """(report entry, uint8 crops [K, height, width, channels]) of the photo at `path`: the
    entry says how many faces were found, each one's box, confidence and landmarks, which
    were kept, or why none was (an unreadable file, no face). With `landmarks` [5, 2] (a
    landmarks file's row) the face is placed by them instead of found; they must lie in
    the photo (a ValueError says where they lie otherwise)."""
    photo, reason = images.load(path, 3)
    reason = reason or detector.too_large(photo)
    if reason:
        return {"faces_found": 0, "kept": [], "reason": reason}, _none(settings)
    height, width = photo.shape[:2]
    if landmarks is not None:
        points = np.asarray(landmarks, np.float64)
        if np.any(points < 0) or np.any(points[:, 0] > width) or np.any(points[:, 1] > height):
            raise ValueError(f"lie outside its {width}x{height} photo")
        if np.ptp(points, axis=0).max() < 1:
            # No similarity carries one point onto the template's five (the warp would
            # invert a zero matrix).
            raise ValueError("are all at one place, not a face's eyes, nose and mouth")
        faces = [detector.Face((0.0, 0.0, float(width), float(height)), 1.0, points)]
    else:
        faces = detector.detect(photo, settings.min_face_size, settings.min_confidence)
    entry = {"size": [int(width), int(height)], "faces_found": len(faces),
             "faces": [face.to_dict() for face in faces]}
    if not faces:
        entry.update(kept=[], reason=detector.too_small(photo) or NO_FACE)
        return entry, _none(settings)
    kept = list(range(len(faces))) if settings.keep == "all" else [0]
    entry["kept"] = kept
    crops = aligner.crops(photo, np.stack([faces[i].landmarks for i in kept]),
                          settings.height, settings.width, settings.channels)
    return entry, crops


def _none(settings):
    return np.zeros((0, settings.height, settings.width, settings.channels), np.uint8)
