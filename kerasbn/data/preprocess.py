"""The dataset converter's preprocessing (kerasbn.data.images, Pillow) as TensorFlow ops, so an
exported network takes a photo of any size and makes it what training saw.

Gray is Pillow's integer luma (R*19595 + G*38470 + B*7471 + 32768) >> 16, exact. Resizing is
bilinear with Pillow's antialiasing (a triangle filter widened by the scale), over the same
crop box (`crop`), fitted size and offset (`pad`) or whole image (`stretch`), rounded to
whole gray levels as the converter's uint8 records are. It differs from Pillow's
fixed-point arithmetic by at most a few gray levels (tests/test_preprocess.py measures it).
"""

import tensorflow as tf


def to_channels(images, channels):
    """uint8 [N, H, W, 1 or 3] -> float32 [N, H, W, channels] with Pillow's gray or RGB."""
    if channels == 1:
        rgb = tf.cast(images, tf.int32)
        luma = tf.bitwise.right_shift(
            rgb[..., :1] * 19595 + rgb[..., 1:2] * 38470 + rgb[..., 2:3] * 7471 + 32768, 16)
        return tf.cast(tf.cond(tf.shape(images)[-1] == 1, lambda: rgb[..., :1],
                               lambda: luma), tf.float32)
    images = tf.cast(images, tf.float32)
    return tf.cond(tf.shape(images)[-1] == 1, lambda: tf.tile(images, [1, 1, 1, 3]),
                   lambda: images)


def _scale(images, height, width, top, left, crop_height, crop_width):
    """The box (top, left, crop_height, crop_width) of `images`, in source pixels (may be
    fractional), resampled to height x width as Pillow's resize(box=...) does."""
    scale = tf.stack([tf.cast(height, tf.float32) / crop_height,
                      tf.cast(width, tf.float32) / crop_width])
    return tf.raw_ops.ScaleAndTranslate(
        images=images, size=tf.stack([height, width]), scale=scale,
        translation=-tf.stack([top, left]) * scale, kernel_type="triangle", antialias=True)


def resize(images, size, mode, out_width=None):
    """float32 [N, H, W, C] -> float32 [N, size, size, C] of whole gray levels, as
    kerasbn.data.images.resize: `crop` keeps the aspect and the centre, `pad` keeps the aspect
    and pads with black, `stretch` ignores the aspect (and alone takes an `out_width` other
    than `size`, for a network of non-square input)."""
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    if out_width not in (None, size) and mode != "stretch":
        raise ValueError(f"resize_mode {mode!r} makes square images; a {size}x{out_width} "
                         "input is stretched")
    if mode == "stretch":
        out = _scale(images, size, out_width or size, 0.0, 0.0, height, width)
    elif mode == "crop":
        # ImageOps.fit: the largest centred square, in fractional pixels.
        side = tf.minimum(height, width)
        out = _scale(images, size, size, (height - side) / 2, (width - side) / 2, side, side)
    elif mode == "pad":
        # ImageOps.pad: the longer side fitted to `size`, the shorter rounded (half to even,
        # like Python's round), then centred on black at a rounded offset.
        wide = width >= height
        fitted = tf.cast(tf.round(tf.where(wide, height / width, width / height) * size),
                         tf.int32)
        new_height = tf.where(wide, fitted, size)
        new_width = tf.where(wide, size, fitted)
        inner = _scale(images, new_height, new_width, 0.0, 0.0, height, width)
        top = tf.cast(tf.round(tf.cast(size - new_height, tf.float32) / 2), tf.int32)
        left = tf.cast(tf.round(tf.cast(size - new_width, tf.float32) / 2), tf.int32)
        out = tf.image.pad_to_bounding_box(inner, top, left, size, size)
    else:
        raise ValueError(f"unknown resize_mode {mode!r}")
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


# A binary PGM (P5) or PPM (P6) header: magic, width, height, maxval, each after whitespace
# or comment lines, and the one whitespace byte before the pixels.
_NETPBM_HEADER = r"^P[56](?:\s|#[^\n]*\n)+\d+(?:\s|#[^\n]*\n)+\d+(?:\s|#[^\n]*\n)+\d+\s"


def decode(encoded, channels):
    """One encoded JPEG/PNG/GIF/BMP/PGM/PPM string -> uint8 [1, H, W, 1 or 3] (alpha
    dropped, as Pillow's conversion drops it), each pixel as Pillow decodes it."""
    netpbm = tf.strings.regex_full_match(tf.strings.substr(encoded, 0, 2), "P[56]")
    wanted = 3 if channels == 3 else 0
    # libjpeg's accurate integer DCT is the one Pillow decodes with: the pixels are then
    # Pillow's to the bit, where TensorFlow's default (the fast DCT) is up to 18 levels off,
    # enough to move a detected face's box.
    image = tf.cond(netpbm, lambda: _decode_netpbm(encoded),
                    lambda: tf.cond(tf.io.is_jpeg(encoded),
                                    lambda: tf.io.decode_jpeg(encoded, channels=wanted,
                                                              dct_method="INTEGER_ACCURATE"),
                                    lambda: tf.io.decode_image(encoded, channels=wanted,
                                                               expand_animations=False)))
    image = tf.cond(tf.shape(image)[-1] == 2, lambda: image[..., :1],
                    lambda: image)
    image = tf.cond(tf.shape(image)[-1] == 4, lambda: image[..., :3], lambda: image)
    return image[None]


def _decode_netpbm(encoded):
    """A binary PGM/PPM -> uint8 [H, W, 1 or 3] as Pillow reads it and the converter makes it
    8-bit: a maxval under 255 scaled to 255 (rounded half up); 16-bit values scaled to 65535,
    then divided by 257 when any exceeds 255 (`images.to_8bit`)."""
    head = tf.strings.substr(encoded, 0, 1024)
    size = tf.strings.length(head) - tf.strings.length(
        tf.strings.regex_replace(head, _NETPBM_HEADER, "", replace_global=False))
    tokens = tf.strings.split(tf.strings.strip(tf.strings.regex_replace(
        tf.strings.substr(head, 0, size), "#[^\n]*", " ")))
    tf.debugging.assert_equal(tf.size(tokens), 4, "not a binary PGM or PPM header")
    width, height, maxval = (tf.strings.to_number(tokens[i], tf.int32) for i in (1, 2, 3))
    depth = tf.where(tokens[0] == "P6", 3, 1)
    wide = maxval > 255
    count = width * height * depth
    body = tf.strings.substr(encoded, size, count * tf.where(wide, 2, 1))
    tf.debugging.assert_equal(tf.strings.length(body), count * tf.where(wide, 2, 1),
                              "the PGM/PPM file is cut short")

    def eight_bit():
        values = tf.cast(tf.io.decode_raw(body, tf.uint8), tf.float32)
        return tf.floor(values * 255.0 / tf.cast(maxval, tf.float32) + 0.5)

    def sixteen_bit():
        values = tf.cast(tf.io.decode_raw(body, tf.uint16, little_endian=False), tf.float32)
        values = tf.floor(values * 65535.0 / tf.cast(maxval, tf.float32) + 0.5)
        return tf.cond(tf.reduce_max(values) > 255.0, lambda: tf.round(values / 257.0),
                       lambda: values)

    values = tf.cond(wide, sixteen_bit, eight_bit)
    return tf.cast(tf.reshape(tf.clip_by_value(values, 0.0, 255.0), [height, width, depth]),
                   tf.uint8)
