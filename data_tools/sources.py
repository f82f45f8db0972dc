"""The face collections build_records reads, as (identity name -> items) listings.

An item is a path (folder trees and list files) or a ready uint8 array (CIFAR-10). Identities
are sorted by name (list-file labels numerically), which fixes the labels of the output.
"""

import os
import pickle

import numpy as np

from kerasbn.records import DataError

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"


def is_cifar10(path):
    return os.path.isdir(path) and all(
        os.path.isfile(os.path.join(path, name)) for name in CIFAR_TRAIN + [CIFAR_TEST])


def folder_tree(root):
    """{identity: sorted image paths}: one subfolder per identity, images anywhere below it.

    Files directly in `root` (a README, a list file) are not images of anyone and are ignored.
    """
    identities = {}
    for name in sorted(os.listdir(root)):
        top = os.path.join(root, name)
        if not os.path.isdir(top):
            continue
        paths = []
        for directory, subdirs, files in os.walk(top):
            subdirs.sort()
            paths += [os.path.join(directory, f) for f in sorted(files) if not f.startswith(".")]
        if paths:
            identities[name] = paths
    if not identities:
        raise DataError(f"{root} holds no identity subfolders with files; a folder source needs "
                        "one subfolder per identity")
    return identities


def list_file(path, root):
    """{label: paths} of a Caffe convert_imageset list (`relative/path label` per line).

    Identity names are the labels as written; malformed lines stop with their line number.
    """
    identities = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            relative, _, label = line.rpartition(" ")
            if not relative or not label.lstrip("-").isdigit():
                raise DataError(f"{path}:{number}: expected `relative/path label`, got {line!r}")
            identities.setdefault(int(label), []).append(os.path.join(root, relative.strip()))
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
