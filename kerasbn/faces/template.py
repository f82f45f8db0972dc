"""Where the five landmarks of an aligned face lie: insightface's ArcFace template.

The template is `arcface_dst` of insightface (utils/face_align.py), for a 112x112 crop:
left eye, right eye, nose tip, left and right mouth corner, in the photo's own left-to-right
order (the subject's right eye first), x then y in pixels.

Other crop sizes follow one rule:
- a square crop whose side is a multiple of 128 takes insightface's 128 rule: the template
  scaled by side / 128 and moved right by 8 x side / 128 (so at 128, x + 8);
- any other crop of height H and width W: the template scaled by H / 112, then centred in
  the width: x moves by (W - 112 x H / 112) / 2. So 112x112 is the template itself, 112x96
  (SphereFace's and CosFace's crop) is it 8 px to the left, and the study's 50x50 is it
  scaled by 50 / 112.
"""

import numpy as np

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def template(height, width):
    """The five landmarks' positions [5, 2] (x, y) in an aligned crop of height x width."""
    if height == width and height % 128 == 0:
        ratio = height / 128.0
        return ARCFACE_112 * ratio + [8.0 * ratio, 0.0]
    scale = height / 112.0
    return ARCFACE_112 * scale + [(width - 112.0 * scale) / 2.0, 0.0]
