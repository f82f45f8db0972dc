"""Every image mode Pillow opens, converted by build_records, against numpy references."""

import numpy as np
import pytest
from PIL import Image

from kerasbn.data import images

RGB = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
# ITU-R 601-2 luma, as Pillow's own L conversion rounds it.
R, G, B = (RGB[..., i].astype(np.int64) for i in range(3))
GRAY = (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16


def _array(image, channels):
    array = images.to_array(image, channels, 16, "stretch")
    return array[..., 0] if channels == 1 else array


@pytest.mark.parametrize("mode,tolerance", [
    ("RGB", 0), ("RGBA", 0), ("RGBX", 0), ("RGBa", 0), ("CMYK", 0), ("YCbCr", 3), ("HSV", 6),
    ("LAB", 20)])
def test_colour_modes_give_the_right_gray_and_rgb(mode, tolerance):
    image = Image.fromarray(RGB).convert(mode)
    assert np.abs(_array(image, 1).astype(int) - GRAY).max() <= max(tolerance, 1)
    assert np.abs(_array(image, 3).astype(int) - RGB).max() <= tolerance


def test_gray_modes_with_and_without_alpha():
    gray = GRAY.astype(np.uint8)
    premultiplied = Image.frombytes("La", (16, 16), Image.fromarray(gray).convert("LA").tobytes())
    for mode in ("L", "LA", "La", "P", "PA"):
        image = premultiplied if mode == "La" else Image.fromarray(gray).convert(mode)
        assert image.mode == mode
        assert np.array_equal(_array(image, 1), gray), mode
        assert np.array_equal(_array(image, 3), np.repeat(gray[..., None], 3, axis=2)), mode
    bilevel = _array(Image.fromarray(gray).convert("1", dither=Image.Dither.NONE), 1)
    assert np.array_equal(bilevel, np.where(gray >= 128, 255, 0))


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    sixteen = (GRAY.astype(np.uint16) * 257 + 100).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    loaded, reason = images.load(str(tmp_path / "16.png"), 1, 16, "stretch")
    assert reason is None
    np.testing.assert_array_equal(loaded[..., 0], np.rint(sixteen / 257).astype(np.uint8))
    wide = Image.fromarray(sixteen.astype(np.int32), "I")
    assert np.array_equal(_array(wide, 1), np.rint(sixteen / 257).astype(np.uint8))
    unit = Image.fromarray((GRAY / 255.0).astype(np.float32), "F")
    assert np.abs(_array(unit, 1).astype(int) - GRAY).max() <= 1
