"""insightface's training sets as MXNet RecordIO (`train.rec`, `train.idx`, `property`),
read without MXNet.

The format, as MXNet's recordio.py and dmlc-core's recordio.h write it:
- a record: uint32 magic 0xced7230a, uint32 `lrecord` (bits 29-31 a continuation flag,
  bits 0-28 the length), the payload, zero padding to a multiple of 4 bytes. A payload that
  holds the magic word at a 4-byte boundary is written in parts (flag 1 first, 2 middle, 3
  last), the magic word dropped between them; reading puts it back.
- an image payload: the header struct "IfQQ" (flag, label, id, id2: 24 bytes, little-endian),
  then `flag` float32 labels when flag > 0, then the encoded image (JPEG for insightface).
- `train.idx`: `key<TAB>byte offset` lines; `property`: `classes,height,width`.
- insightface's layout: record 0's header has flag 2 and labels (a, b): images are records
  1 .. a-1, and records a .. b-1 are one per identity, each with labels (start, end), the
  range of that identity's image records. Sets without record 0's ranges are plain image
  records, each labelled by its header's (first) label.

Refused, naming the record: identity ranges that overlap (they would merge identities) or
reach outside the image records (a huge range would exhaust memory), an image record whose
header label disagrees with the identity range it lies in (insightface trains on the header
label, kerasbn on the ranges: they must agree), labels that are NaN, infinite, negative or
fractional, and `.idx` offsets that are negative.
"""

import io
import os
import struct

import numpy as np

from kerasbn.data import images
from kerasbn.data.records import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_RECORD = struct.Struct("<II")
_LENGTH_BITS = (1 << 29) - 1


def beside(rec_path, name):
    """The path of `name` (`train.idx`, `property`) next to `rec_path` (the .idx takes the
    .rec's own stem)."""
    if name == "idx":
        return os.path.splitext(rec_path)[0] + ".idx"
    return os.path.join(os.path.dirname(os.path.abspath(rec_path)), name)


def read_index(rec_path):
    """[(key, offset)] of the .rec beside its .idx, in the .idx's order; without a .idx, by
    walking the records."""
    path = beside(rec_path, "idx")
    if not os.path.isfile(path):
        return list(enumerate(_walk(rec_path)))
    index = []
    for number, line in enumerate(_text_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            key, offset = int(fields[0]), int(fields[1])
            if offset < 0:
                raise ValueError
        except (ValueError, IndexError):
            raise DataError(f"{path}, line {number}: expected `key<TAB>offset` (an offset of "
                            f"0 or more), got {line.strip()!r}; rebuild the index") from None
        index.append((key, offset))
    return index


def _text_lines(path):
    """The lines of the ASCII text file `path`; DataError naming it when it is not text."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not ASCII text (byte {e.start}); the file is damaged, "
                        "copy or rebuild it") from None


def _walk(rec_path):
    """The offset of every record, read from the records themselves."""
    size = os.path.getsize(rec_path)
    offsets, offset = [], 0
    with open(rec_path, "rb") as f:
        while offset < size:
            offsets.append(offset)
            offset = _record_end(f, offset, size, len(offsets) - 1, rec_path)
    return offsets


def _record_end(f, start, size, key, rec_path):
    """The byte after record `key` (all its parts) starting at `start`; DataError when it
    is cut off or not a record."""
    offset = start
    while True:
        f.seek(offset)
        head = f.read(_RECORD.size)
        if len(head) < _RECORD.size:
            raise _truncated(rec_path, key, start, size)
        magic, lrecord = _RECORD.unpack(head)
        if magic != MAGIC:
            raise DataError(f"{rec_path}: record {key} at byte {offset} does not start with "
                            "RecordIO's magic number; the file or its .idx is damaged")
        length = lrecord & _LENGTH_BITS
        offset += _RECORD.size + length + (-length % 4)
        if offset > size:
            raise _truncated(rec_path, key, start, size)
        if lrecord >> 29 in (0, 3):
            return offset


def _truncated(rec_path, key, start, size):
    return DataError(f"{rec_path} is truncated: record {key} (from byte {start:,}) is cut off "
                     f"at the file's end ({size:,} bytes); download or copy the file again")


def check_complete(rec_path, index):
    """DataError naming the first record of `index` that the .rec does not hold whole."""
    size = os.path.getsize(rec_path)
    ordered = sorted(index, key=lambda item: item[1])
    inside = [item for item in ordered if item[1] < size]
    if inside:
        with open(rec_path, "rb") as f:
            _record_end(f, inside[-1][1], size, inside[-1][0], rec_path)
    if len(inside) < len(ordered):
        raise _truncated(rec_path, *ordered[len(inside)], size)


def read_payload(f, offset):
    """The payload of the record at `offset` of open file `f`, its parts joined."""
    parts = []
    while True:
        f.seek(offset)
        head = f.read(_RECORD.size)
        if len(head) < _RECORD.size:
            raise ValueError(f"the record at byte {offset} is cut off")
        magic, lrecord = _RECORD.unpack(head)
        if magic != MAGIC:
            raise ValueError(f"no record starts at byte {offset}")
        length, flag = lrecord & _LENGTH_BITS, lrecord >> 29
        data = f.read(length)
        if len(data) < length:
            raise ValueError(f"the record at byte {offset} is cut off")
        parts.append(data)
        offset += _RECORD.size + length + (-length % 4)
        if flag in (0, 3):
            return _MAGIC_BYTES.join(parts)


def unpack(payload):
    """(labels as float32 array, image bytes) of an image record's payload."""
    if len(payload) < _HEADER.size:
        raise ValueError(f"a {len(payload)}-byte record is shorter than its header")
    flag, label, _, _ = _HEADER.unpack_from(payload)
    start = _HEADER.size + 4 * flag
    if flag:
        if len(payload) < start:
            raise ValueError(f"a record's {flag} labels run past its end")
        labels = np.frombuffer(payload, np.float32, flag, _HEADER.size)
    else:
        labels = np.array([label], np.float32)
    return labels, payload[start:]


def read_property(rec_path):
    """(classes, height, width) of the `property` file beside the .rec, or None without one."""
    path = beside(rec_path, "property")
    if not os.path.isfile(path):
        return None
    text = "\n".join(_text_lines(path)).strip()
    try:
        classes, height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{path}: expected `classes,height,width`, got {text!r}") from None
    return classes, height, width


def identities(rec_path):
    """({identity name: [(image name, (rec path, offset))]}, description) of a .rec.

    Identity names are the labels zero-padded, so sorting them keeps the labels' order; an
    image's name is `train.rec:KEY`, its record key.
    """
    index = read_index(rec_path)
    if not index:
        raise DataError(f"{rec_path} holds no records")
    check_complete(rec_path, index)
    offsets = dict(index)
    labels = {}
    with open(rec_path, "rb") as f:
        first = _labels(f, offsets, 0, rec_path) if 0 in offsets else []
        if len(first) == 2 and first[0] >= 1 and _ranged(f, offsets, first):
            layout = "insightface layout (identity ranges in record 0)"
            labels = _ranges(f, offsets, first, rec_path)
        else:
            layout = "one image per record"
            for key, _ in index:
                labels[key] = _whole(_labels(f, offsets, key, rec_path)[0], key, rec_path)
    width, key_width = len(str(max(labels.values()))), len(str(max(labels)))
    name = os.path.basename(rec_path)
    listing = {}
    for key, label in sorted(labels.items()):
        if key not in offsets:
            raise DataError(f"{rec_path}: an identity's range names record {key}, which the "
                            ".idx does not hold; the index and the file disagree")
        listing.setdefault(f"{label:0{width}d}", []).append(
            (f"{name}:{key:0{key_width}d}", (rec_path, offsets[key])))
    described = read_property(rec_path)
    if described:
        classes, height, width = described
        layout += f"; property: {classes} classes of {height}x{width}" + (
            "" if classes == len(listing) else f" (the records hold {len(listing)})")
    return listing, f"MXNet RecordIO {os.path.abspath(rec_path)}, {layout}"


def _ranged(f, offsets, first):
    """Whether records first[0] .. first[1]-1 all exist and the first holds a range."""
    if not first[0] < first[1] <= max(offsets) + 1:
        return False
    keys = range(int(first[0]), int(first[1]))
    return all(k in offsets for k in keys) and len(_labels(f, offsets, keys[0], "")) >= 2


def _ranges(f, offsets, first, rec_path):
    """{image record key: identity} of insightface's layout, each identity's (start, end)
    read from its record; DataError naming the record whose range overlaps another's,
    reaches outside the image records 1 .. first[0]-1, or whose images' header labels
    disagree with it."""
    labels = {}
    for identity, key in enumerate(range(int(first[0]), int(first[1]))):
        start, end = (_whole(v, key, rec_path) for v in _labels(f, offsets, key, rec_path)[:2])
        if not 1 <= start <= end <= first[0]:
            raise DataError(f"{rec_path}: record {key} gives identity {identity} the image "
                            f"records {start} .. {end - 1}, outside the images 1 .. "
                            f"{int(first[0]) - 1} that record 0 announces; the file is damaged")
        for image in range(start, end):
            if image in labels:
                raise DataError(f"{rec_path}: record {key} gives image record {image} to "
                                f"identity {identity}, but identity {labels[image]}'s range "
                                "holds it too; overlapping ranges would merge two people, "
                                "rebuild the set")
            labels[image] = identity
    for image, identity in sorted(labels.items()):
        if image not in offsets:
            continue
        header = _whole(_labels(f, offsets, image, rec_path)[0], image, rec_path)
        if header != identity:
            raise DataError(f"{rec_path}: image record {image} is labelled {header} in its "
                            f"header but lies in identity {identity}'s range in record 0's "
                            "layout; insightface trains on the header, kerasbn on the "
                            "ranges, so the set is inconsistent: rebuild it")
    return labels


def _whole(value, key, rec_path):
    """A label as an int; DataError naming record `key` for NaN, infinity, a negative or a
    fractional value."""
    if not np.isfinite(value) or value < 0 or value != int(value):
        raise DataError(f"{rec_path}: record {key} has the label {float(value)!r}, not a "
                        "whole number of 0 or more; the file is damaged")
    return int(value)


def _labels(f, offsets, key, rec_path):
    """The labels in record `key`'s header, reading no more of the record than they need."""
    offset = offsets[key]
    try:
        f.seek(offset)
        head = f.read(_RECORD.size + _HEADER.size)
        if len(head) == _RECORD.size + _HEADER.size:
            magic, lrecord = _RECORD.unpack_from(head)
            flag = _HEADER.unpack_from(head, _RECORD.size)[0]
            if magic == MAGIC and lrecord & _LENGTH_BITS >= _HEADER.size + 4 * flag:
                return unpack(head[_RECORD.size:] + f.read(4 * flag))[0]
        return unpack(read_payload(f, offset))[0]
    except ValueError as e:
        raise DataError(f"{rec_path}: record {key}: {e}; the file is damaged") from None


def load(source, channels, size, mode):
    """(array, None) of the image record `source` = (rec path, offset), or (None, reason)."""
    rec_path, offset = source
    try:
        with open(rec_path, "rb") as f:
            _, encoded = unpack(read_payload(f, offset))
    except (OSError, ValueError) as e:
        return None, f"unreadable record: {e}"
    return images.load(io.BytesIO(encoded), channels, size, mode)
