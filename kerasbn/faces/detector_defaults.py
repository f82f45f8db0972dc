"""The face detector's limits when none are given: the smallest face it looks for (pixels)
and the least confidence a kept face has."""

MIN_FACE_SIZE = 20
MIN_CONFIDENCE = 0.9
