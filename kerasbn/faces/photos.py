"""The photos a command is given: a folder tree (every image file below it) or a list file
(one photo path per line, relative to the list's folder; further fields, such as a label,
are ignored), as (name relative to the source, path) pairs in a stable order."""

import os

from kerasbn.data import images
from kerasbn.utils import errors


def listing(source, exclude=None):
    """[(relative name, path)] of the photos under `source`, sorted by name, never inside
    directory `exclude` (an output written into the source); DataError naming `source` when
    it holds none."""
    if os.path.isdir(source):
        found = [(os.path.relpath(path, source), path)
                 for path, reason in images.files_under(source, exclude=exclude)
                 if reason is None]
    elif os.path.isfile(source):
        found = _listed(source)
    else:
        raise errors.DataError(f"{source} does not exist; give a folder of photos or a list "
                               "file of photo paths")
    if not found:
        raise errors.DataError(f"{source} holds no photos ({', '.join(images.IMAGE_EXTENSIONS)})")
    return sorted(found)


def _listed(path):
    root = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split()[0] for line in f if line.strip() and not line.startswith("#")]
    except UnicodeDecodeError as e:
        raise errors.DataError(f"{path} is not UTF-8 text (byte {e.start}); give a list of "
                               "photo paths, one per line") from None
    return [(os.path.normpath(line), os.path.join(root, line)) for line in lines]
