"""One photo made into aligned face crops, with what was found: what `python -m
kerasbn.align` and `build_records --align` do to each photo."""

import dataclasses

import numpy as np

from kerasbn.data import images
from kerasbn.faces import aligner, detector, detector_defaults

KEEP = ("largest", "all")


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


def align_photo(path, settings):
    """(report entry, uint8 crops [K, height, width, channels]) of the photo at `path`: the
    entry says how many faces were found, each one's box, confidence and landmarks, which
    were kept, or why none was (an unreadable file, no face)."""
    photo, reason = images.load(path, 3)
    if reason:
        return {"faces_found": 0, "kept": [], "reason": reason}, _none(settings)
    faces = detector.detect(photo, settings.min_face_size, settings.min_confidence)
    entry = {"size": [int(photo.shape[1]), int(photo.shape[0])], "faces_found": len(faces),
             "faces": [face.to_dict() for face in faces]}
    if not faces:
        small = min(photo.shape[:2]) < detector.SMALLEST_PHOTO
        entry.update(kept=[], reason=f"smaller than {detector.SMALLEST_PHOTO} px" if small
                     else "no face found")
        return entry, _none(settings)
    kept = list(range(len(faces))) if settings.keep == "all" else [0]
    entry["kept"] = kept
    crops = aligner.crops(photo, np.stack([faces[i].landmarks for i in kept]),
                          settings.height, settings.width, settings.channels)
    return entry, crops


def _none(settings):
    return np.zeros((0, settings.height, settings.width, settings.channels), np.uint8)
