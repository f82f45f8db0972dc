"""The face detector's limits: the smallest face it looks for (pixels) and the least
confidence a kept face has when none are given, and the largest photo it takes."""

MIN_FACE_SIZE = 20
MIN_CONFIDENCE = 0.9
# The detector's pyramid costs about 130 bytes a pixel (a 10000x10000 photo took 12.7 GB in
# Python and 7.4 GB in serve_photo), so larger photos are refused by name, not run out of
# memory.
MAX_PIXELS = 40_000_000
