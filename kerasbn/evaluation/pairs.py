"""Verification pairs in LFW's pairs.txt layout, resolved to a dataset's holdout records.

    SETS<TAB>N                       (LFW: 10 300; build_records: 1 COUNT)
    name<TAB>i<TAB>j                 a matched pair: images i and j of one identity
    name1<TAB>i<TAB>name2<TAB>j      a mismatched pair

Each set holds N matched then N mismatched pairs. Image numbers are 1-based positions in
the identity's images sorted by file name (in LFW's folder, name/name_0001.jpg is image 1;
in a dataset, the holdout records' image/filename). With ten sets, the sets are the
verification folds, as LFW's protocol prescribes.
"""

import collections
import os

import numpy as np
import tensorflow as tf

from kerasbn.data import images, records
from kerasbn.evaluation import verification

Pair = collections.namedtuple("Pair", "first index_first second index_second same set")


def read_pairs(path):
    """The pairs of a pairs.txt; DataError naming the line of a malformed one."""
    if not os.path.isfile(path):
        raise records.DataError(f"{path} not found: give a pairs.txt in LFW's layout")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise records.DataError(f"{path} is not UTF-8 text (byte {e.start}); give a "
                                "pairs.txt in LFW's layout") from None
    try:
        sets, per_set = (int(v) for v in lines[0].split())
    except (ValueError, IndexError):
        raise records.DataError(f"{path}:1: expected `SETS<TAB>PAIRS_PER_KIND`, got "
                                f"{lines[0] if lines else ''!r}") from None
    if len(lines) - 1 != sets * per_set * 2:
        raise records.DataError(f"{path} announces {sets} sets of {per_set} matched and "
                                f"{per_set} mismatched pairs but holds {len(lines) - 1} pairs")
    pairs = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t") if "\t" in line else line.split()
        set_index = (number - 2) // (2 * per_set)
        try:
            if len(fields) == 3:
                pairs.append(Pair(fields[0], int(fields[1]), fields[0], int(fields[2]), True,
                                  set_index))
            elif len(fields) == 4:
                pairs.append(Pair(fields[0], int(fields[1]), fields[2], int(fields[3]), False,
                                  set_index))
            else:
                raise ValueError
        except ValueError:
            raise records.DataError(f"{path}:{number}: expected `name i j` or "
                                    f"`name1 i name2 j`, got {line!r}") from None
    verification.require_both_kinds([pair.same for pair in pairs], path)
    return pairs


def _pick(path, number, name, image, images, where):
    """The index of `name`'s image number `image` in `images`; DataError naming the line."""
    if not 1 <= image <= len(images):
        raise records.DataError(f"{path}:{number}: {name} image {image} is not in {where} "
                                f"({len(images)} images of {name})")
    return images[image - 1]


def _resolve(path, pairs, per_identity, where):
    """(first, second, same, set) arrays of the pairs read from `path` over `per_identity`
    (name -> its items sorted by file name)."""
    rows = []
    for number, pair in enumerate(pairs, start=2):
        rows.append((_pick(path, number, pair.first, pair.index_first,
                           per_identity.get(pair.first, []), where),
                     _pick(path, number, pair.second, pair.index_second,
                           per_identity.get(pair.second, []), where),
                     pair.same, pair.set))
    first, second, same, sets = (np.array(column) for column in zip(*rows))
    return first, second, same.astype(bool), sets


def file_pairs(path, image_root):
    """(files, first, second, same, set): the image files a pairs.txt names under
    `image_root` (LFW's layout: one folder per identity), each once, and each pair's two
    indices into them; DataError naming a line whose image is not there."""
    if not os.path.isdir(image_root):
        raise records.DataError(f"--image_root={image_root} is not a directory; give the "
                                "folder holding one sub-folder of images per identity")
    pairs = read_pairs(path)
    per_identity = {}
    for name in {p.first for p in pairs} | {p.second for p in pairs}:
        folder = os.path.join(image_root, name)
        found = sorted(f for f in os.listdir(folder) if f.lower().endswith(
            images.IMAGE_EXTENSIONS)) if os.path.isdir(folder) else []
        per_identity[name] = [os.path.join(name, f) for f in found]
    first, second, same, sets = _resolve(path, pairs, per_identity, image_root)
    used = sorted(set(first.tolist()) | set(second.tolist()))
    index = {item: i for i, item in enumerate(used)}
    return ([os.path.join(image_root, item) for item in used],
            np.array([index[f] for f in first.tolist()]),
            np.array([index[s] for s in second.tolist()]), same, sets)


def holdout_pairs(data_dir, manifest):
    """(first, second, same, set) arrays over the holdout split's records, in manifest order,
    of the dataset's pairs file; DataError naming a pair that points at no record."""
    if manifest.pairs_file is None or "holdout" not in manifest.splits:
        raise records.DataError(f"{records.manifest_path(data_dir)} has no holdout pairs; "
                                "rebuild with --holdout_identities and --pairs")
    path = os.path.join(data_dir, manifest.pairs_file)
    names = manifest.holdout_class_names
    files = records.split_files(data_dir, manifest, "holdout")
    dataset = tf.data.TFRecordDataset(files, manifest.compression).batch(4096)
    labels, filenames = [], []
    for batch in dataset:
        meta = records.parse_metadata(batch)
        labels += meta["label"].tolist()
        filenames += [f.decode("utf-8", "surrogateescape") for f in meta["filename"]]
    per_identity = collections.defaultdict(list)
    for index in sorted(range(len(labels)), key=lambda i: filenames[i]):
        per_identity[names[labels[index]]].append(index)
    return _resolve(path, read_pairs(path), per_identity, "the holdout split")
