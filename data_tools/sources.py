"""The face collections build_records reads, as (identity name -> items) listings.

An item is a path (folder trees and list files) or a ready uint8 array (CIFAR-10). Identities
are sorted by name (list-file labels numerically), which fixes the labels of the output.
"""

import os
import pickle

import numpy as np

from kerasbn.data import images
from kerasbn.data.records import DataError

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"


def is_cifar10(path):
    return os.path.isdir(path) and all(
        os.path.isfile(os.path.join(path, name)) for name in CIFAR_TRAIN + [CIFAR_TEST])


def folder_tree(root, exclude=None, extensions=images.IMAGE_EXTENSIONS):
    """({identity: sorted image paths}, [(path, why it was left out)]): one subfolder per
    identity, images anywhere below it.

    Only regular files whose name ends with one of `extensions` (any case) are images; the
    rest (a dataset's rejects such as Extended Yale B's *.pgm.bad, notes, a FIFO) are left
    out and listed. Files directly in `root` (a README, a list file) are not images of anyone
    and are ignored, and so is the directory `exclude` wherever it lies (the output, when it
    is inside the source: it must never become an identity or part of one).
    """
    skip = os.path.realpath(exclude) if exclude else None
    identities, left_out = {}, []
    for name in sorted(os.listdir(root)):
        top = os.path.join(root, name)
        if not os.path.isdir(top) or os.path.realpath(top) == skip:
            continue
        paths = []
        for path, reason in images.files_under(top, extensions, exclude):
            (left_out.append((path, reason)) if reason else paths.append(path))
        if paths:
            identities[name] = paths
    if not identities:
        raise DataError(f"{root} holds no identity subfolders with image files ("
                        f"{', '.join(extensions)}; {len(left_out)} other files); a folder "
                        "source needs one subfolder per identity")
    return identities, left_out


def list_file(path, root, allow_outside_root=False):
    """{label: paths} of a Caffe convert_imageset list (`relative/path label` per line).

    Identity names are the labels as written. A malformed line, an image listed twice, or a
    path outside `root` (unless `allow_outside_root`) stops with its line number.
    """
    identities, seen = {}, {}
    inside = os.path.realpath(root) + os.sep
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            relative, _, label = line.rpartition(" ")
            if not relative or not label.lstrip("-").isdigit():
                raise DataError(f"{path}:{number}: expected `relative/path label`, got {line!r}")
            image = os.path.join(root, relative.strip())
            if not allow_outside_root and not os.path.realpath(image).startswith(inside):
                raise DataError(f"{path}:{number}: {relative.strip()} lies outside --root="
                                f"{root}; fix the path, or pass --allow_outside_root")
            key = os.path.realpath(image)
            if key in seen:
                raise DataError(f"{path}:{number}: {relative.strip()} is listed again (first "
                                f"on line {seen[key]}); list each image once, with one label")
            seen[key] = number
            identities.setdefault(int(label), []).append(image)
    if not identities:
        raise DataError(f"{path} lists no images")
    return {str(label): paths for label, paths in sorted(identities.items())}


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({e}); download "
                        "cifar-10-python.tar.gz again") from None


def cifar10(path):
    """({class name: [HxWx3 uint8]} train, same for test, class names) of cifar-10-batches-py."""
    meta = os.path.join(path, "batches.meta")
    names = ([n.decode() for n in _unpickle(meta)[b"label_names"]] if os.path.exists(meta)
             else [str(i) for i in range(10)])

    def read(files):
        split = {name: [] for name in names}
        for name in files:
            batch = _unpickle(os.path.join(path, name))
            images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
            for image, label in zip(images.transpose(0, 2, 3, 1), batch[b"labels"]):
                split[names[label]].append(image)
        return split

    return read(CIFAR_TRAIN), read([CIFAR_TEST]), names
