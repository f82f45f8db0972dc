"""The export's in-graph preprocessing against the converter's (Pillow) on the same photos."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kerasbn.data import images, preprocess


def photo(height, width, channels, seed=0):
    """A smooth photo with edges (gradients, a disc, noise), uint8 [H, W, C]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    planes = [np.sin(7 * y + c) * np.cos(5 * x - c) * 90 + 128 for c in range(channels)]
    disc = ((y - 0.5) ** 2 + (x - 0.4) ** 2 < 0.05) * 60
    image = np.stack(planes, -1) + disc[..., None] + rng.normal(0, 6, (height, width, 1))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", images.RESIZE_MODES)
@pytest.mark.parametrize("shape", [(112, 92, 3), (71, 137, 1), (30, 40, 3), (50, 50, 1)])
@pytest.mark.parametrize("channels", [1, 3])
def test_in_graph_resize_matches_pillow_within_a_gray_level(mode, shape, channels):
    source = photo(*shape)
    pil = images.to_array(Image.fromarray(source.squeeze(-1) if shape[2] == 1 else source),
                          channels, 50, mode).astype(np.float32)
    graph = preprocess.resize(preprocess.to_channels(tf.constant(source[None]), channels),
                              50, mode)[0].numpy()
    difference = np.abs(graph - pil)
    # Measured: mean 0.1-0.2, max 1 (Pillow's fixed-point rounding).
    assert difference.mean() <= 0.5 and difference.max() <= 1, (difference.mean(),
                                                                 difference.max())


def test_gray_is_pillows_integer_luma_exactly():
    rgb = np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(rgb[0]).convert("L"), np.float32)
    np.testing.assert_array_equal(preprocess.to_channels(tf.constant(rgb), 1)[0, ..., 0], pil)


def test_an_image_already_at_size_passes_unchanged():
    face = photo(50, 50, 1)
    for mode in images.RESIZE_MODES:
        out = preprocess.resize(tf.constant(face[None], tf.float32), 50, mode)[0].numpy()
        np.testing.assert_array_equal(out, face)


@pytest.mark.parametrize("fmt, mean, most", [("PNG", 0.5, 1), ("JPEG", 0.5, 1)])
@pytest.mark.parametrize("shape", [(112, 92, 3), (71, 137, 3), (250, 250, 3), (64, 48, 1)])
@pytest.mark.parametrize("channels", [1, 3])
def test_an_encoded_file_preprocesses_as_pillow_reads_it(fmt, mean, most, shape, channels):
    # serve_bytes's path: the resize's rounding is all that differs (JPEG was up to 4 levels
    # off, mean 0.5-0.95, while the graph decoded with libjpeg's fast DCT).
    source = photo(*shape, seed=2)
    encoded = io.BytesIO()
    Image.fromarray(source.squeeze(-1) if shape[2] == 1 else source).save(encoded, fmt)
    pil = images.to_array(Image.open(io.BytesIO(encoded.getvalue())), channels, 50, "crop")
    decoded = preprocess.decode(tf.constant(encoded.getvalue()), channels)
    graph = preprocess.resize(preprocess.to_channels(decoded, channels), 50, "crop")[0]
    difference = np.abs(graph.numpy() - pil.astype(np.float32))
    assert difference.mean() <= mean and difference.max() <= most, (difference.mean(),
                                                                     difference.max())


@pytest.mark.parametrize("quality", [75, 95])
@pytest.mark.parametrize("shape", [(112, 92, 3), (71, 137, 3), (64, 48, 1)])
def test_a_jpeg_decodes_in_the_graph_to_pillows_pixels_exactly(quality, shape):
    """serve_photo finds faces on these pixels, the Python paths on Pillow's: any difference
    moves the boxes (the default fast DCT was up to 18 levels off)."""
    source = photo(*shape, seed=3)
    encoded = io.BytesIO()
    Image.fromarray(source.squeeze(-1) if shape[2] == 1 else source).save(encoded, "JPEG",
                                                                       quality=quality)
    pil = np.asarray(Image.open(io.BytesIO(encoded.getvalue())).convert("RGB"))
    decoded = preprocess.decode(tf.constant(encoded.getvalue()), 3)[0].numpy()
    np.testing.assert_array_equal(np.broadcast_to(decoded, pil.shape), pil)


@pytest.mark.parametrize("magic, maxval", [("P5", 255), ("P5", 15), ("P5", 100),
                                           ("P5", 1000), ("P5", 65535), ("P6", 255),
                                           ("P6", 63)])
@pytest.mark.parametrize("channels", [1, 3])
def test_a_pgm_or_ppm_decodes_in_the_graph_as_the_converter_reads_it(magic, maxval, channels):
    depth = 3 if magic == "P6" else 1
    values = np.random.default_rng(maxval).integers(0, maxval + 1, (7, 5, depth))
    pixels = values.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    encoded = f"{magic}\n# written by a scanner\n5 7\n{maxval}\n".encode() + pixels
    want = images.load(io.BytesIO(encoded), channels)[0].astype(np.float32)
    got = preprocess.to_channels(preprocess.decode(tf.constant(encoded), channels), channels)
    np.testing.assert_array_equal(got[0].numpy(), want)
