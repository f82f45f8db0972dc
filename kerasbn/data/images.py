"""Reading one face image from disk into the uint8 HxWxC array the records store.

Runs in the decoding worker processes of build_records; a file that cannot be used yields a
reason instead of an array, so one bad file never stops a conversion.
"""

import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kerasbn.utils import errors

RESIZE_MODES = ("crop", "pad", "stretch")
# What a folder of photos is taken to hold (build_records' default --extensions, predict
# --embed, a pairs file's image folders): a dataset's own rejects (Extended Yale B's
# *.pgm.bad), notes and list files stay out.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".gif", ".tif",
                    ".tiff", ".webp")


def files_under(root, extensions=IMAGE_EXTENSIONS, exclude=None):
    """(path, None) of each image file below directory `root`, and (path, why it is no
    image) of every other file, in sorted order; hidden files and the directory `exclude`
    (an output written inside the source) are passed over. Only regular files whose name
    ends with one of `extensions` (any case; the dot optional) are images: a FIFO would
    block its reader."""
    extensions = tuple("." + e.lower().lstrip(".") for e in extensions if e.strip("."))
    skip = os.path.realpath(exclude) if exclude else None
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(folder, d)) != skip)
        for name in sorted(names):
            path = os.path.join(folder, name)
            if name.startswith("."):
                continue
            if not name.lower().endswith(extensions):
                yield path, "not an image file name (widen --extensions)"
            elif not os.path.isfile(path):
                yield path, "not a regular file"
            else:
                yield path, None


def resize(image, size, mode):
    """Resizes a PIL image to `size` (one side, or [height, width]): `crop` keeps the
    aspect and crops the centre, `pad` keeps the aspect and pads with black, `stretch`
    ignores the aspect."""
    height, width = (size, size) if isinstance(size, int) else size
    if mode == "stretch":
        return image.resize((width, height), Image.BILINEAR)
    if mode == "crop":
        return ImageOps.fit(image, (width, height), Image.BILINEAR)
    if mode == "pad":
        return ImageOps.pad(image, (width, height), Image.BILINEAR, color=0)
    raise errors.UserError(f"unknown --resize_mode {mode!r}; choose one of "
                           f"{', '.join(RESIZE_MODES)}")


def to_8bit(image):
    """Images of more than 8 bits per value as 8-bit gray ("L"), the range scaled, not
    clipped: Pillow's own convert clips a 16-bit 40000 to 255 (white)."""
    if image.mode.startswith("I"):
        values = np.asarray(image, np.float64)
        if image.mode.startswith("I;16") or values.max() > 255:
            values = values / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.asarray(image, np.float64)
        if values.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return image


# Modes Pillow converts to neither L nor RGB, and the mode they do convert to first.
_VIA = {"LAB": "RGB", "La": "LA"}


def convert(image, target):
    """`image` in mode `target` ("L" or "RGB") from any mode Pillow opens."""
    image = to_8bit(image)
    if image.mode in _VIA:
        image = image.convert(_VIA[image.mode])
    return image.convert(target)


def to_array(image, channels, size, mode, box=None):
    """PIL image -> uint8 [height, width, channels] (`size` one side or [height, width]):
    EXIF orientation applied, then the face box
    (x, y, w, h) cropped when given, then converted and resized (kept at its own size when
    `size` is None)."""
    image = ImageOps.exif_transpose(image)
    if box is not None:
        x, y, w, h = box
        image = image.crop((x, y, x + w, y + h))
    image = convert(image, "L" if channels == 1 else "RGB")
    if size is not None:
        image = resize(image, size, mode)
    array = np.asarray(image, dtype=np.uint8)
    return array.reshape(image.height, image.width, channels)


def load(path, channels, size=None, mode=None, box=None):
    """(array, None) for a usable image file, (None, reason) otherwise; `to_array`'s
    arguments. A JPEG is decoded at full size, never at a reduced DCT scale (Pillow's draft
    mode): the export, predict and evaluate decode it whole, and the pixels a network
    trains on must be those it is served."""
    try:
        if isinstance(path, str) and not stat.S_ISREG(os.stat(path).st_mode):
            # A FIFO or a device would block or stream forever on reading.
            return None, "not a regular file"
        with warnings.catch_warnings(), Image.open(path) as image:
            # Pillow warns past 89 megapixels and refuses past twice that (caught below);
            # what a photo may cost is its caller's to bound (detector_defaults.MAX_PIXELS).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            return to_array(image, channels, size, mode, box), None
    except FileNotFoundError:
        return None, "file not found"
    except UnidentifiedImageError:
        return None, "not an image Pillow can read"
    except Image.DecompressionBombError as e:
        return None, f"larger than Pillow's decompression-bomb limit ({e})"
    except (OSError, SyntaxError, ValueError) as e:
        return None, f"unreadable image ({e})"


def load_batch(sources, channels, size, mode, label, progress=None):
    """uint8 [N, size, size, channels] of image files or file objects, each converted and
    resized as `load` does; DataError naming `label(i)` of the first that cannot be read.
    `progress` (a `Progress`) counts them."""
    batch = np.zeros((len(sources), size, size, channels), np.uint8)
    for i, source in enumerate(sources):
        array, reason = load(source, channels, size, mode)
        if reason:
            raise errors.DataError(f"{label(i)}: {reason}")
        batch[i] = array
        if progress:
            progress.update(1)
    return batch
