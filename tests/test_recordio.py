"""insightface's RecordIO training sets (.rec/.idx/property), written here by a small writer
of the documented format (MXNet's recordio.py: the record framing, the "IfQQ" image header,
insightface's identity ranges in record 0), converted by build_records."""

import io
import os
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import read_records
from data_tools import build_records, convert, recordio, synth
from kerasbn.data import images, records

MAGIC = 0xCED7230A


def _frame(payload, flag=0):
    length = len(payload)
    return struct.pack("<II", MAGIC, (flag << 29) | length) + payload + b"\0" * (-length % 4)


def _record(payload):
    """One record; a payload holding the magic word at a 4-byte boundary goes in parts
    (flags 1, 2, ..., 3), the word dropped between them, as dmlc-core writes it."""
    magic = struct.pack("<I", MAGIC)
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == magic]
    if not cuts:
        return _frame(payload)
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(payload[start:cut])
        start = cut + 4
    pieces.append(payload[start:])
    flags = [1] + [2] * (len(pieces) - 2) + [3]
    return b"".join(_frame(piece, flag) for piece, flag in zip(pieces, flags))


def _pack(label, image=b"", id=0):
    """MXNet's recordio.pack: a scalar label in the header (flag 0), or flag = the number of
    float32 labels that follow it."""
    if np.ndim(label) == 0:
        return struct.pack("<IfQQ", 0, float(label), id, 0) + image
    label = np.asarray(label, np.float32)
    return struct.pack("<IfQQ", label.size, 0.0, id, 0) + label.tobytes() + image


def write_rec(path, payloads, keys=None):
    """train.rec and train.idx (`key<TAB>offset`) of `payloads`."""
    keys = list(range(len(payloads))) if keys is None else keys
    offsets = []
    with open(path, "wb") as f:
        for payload in payloads:
            offsets.append(f.tell())
            f.write(_record(payload))
    with open(os.path.splitext(path)[0] + ".idx", "w") as f:
        f.writelines(f"{key}\t{offset}\n" for key, offset in zip(keys, offsets))


def faces(identities, per_identity, size=112):
    """JPEG bytes of synthetic colour faces, `per_identity` of each identity, in order."""
    params = {k: np.repeat(v, per_identity)
              for k, v in synth.identity_params(7, identities).items()}
    gray = synth.render(params, np.random.default_rng(0), size)
    encoded = []
    for face in gray:
        buffer = io.BytesIO()
        Image.fromarray(np.stack([face] * 3, -1)).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def write_insightface(directory, identities=6, per_identity=5):
    """insightface's layout: record 0 holds (first identity record, end), images 1..n, then
    one record per identity with the (start, end) of its images; and `property`."""
    os.makedirs(directory, exist_ok=True)
    encoded = faces(identities, per_identity)
    n = len(encoded)
    payloads = [_pack([n + 1, n + 1 + identities])]
    payloads += [_pack(i // per_identity, image, id=i + 1) for i, image in enumerate(encoded)]
    payloads += [_pack([1 + k * per_identity, 1 + (k + 1) * per_identity])
                 for k in range(identities)]
    path = os.path.join(directory, "train.rec")
    write_rec(path, payloads)
    with open(os.path.join(directory, "property"), "w") as f:
        f.write(f"{identities},112,112\n")
    return path, encoded


def _decoded(jpeg):
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def test_the_writer_follows_the_documented_bytes(tmp_path):
    path = str(tmp_path / "train.rec")
    write_rec(path, [_pack(3.0, b"abcde"), _pack([1.0, 2.0])])
    data = open(path, "rb").read()
    magic, lrecord = struct.unpack_from("<II", data)
    assert magic == 0xCED7230A and lrecord >> 29 == 0 and lrecord & (2 ** 29 - 1) == 29
    flag, label, id, id2 = struct.unpack_from("<IfQQ", data, 8)
    assert (flag, label, id, id2) == (0, 3.0, 0, 0) and data[32:37] == b"abcde"
    assert data[37:40] == b"\0\0\0"  # padded to 4 bytes
    assert open(str(tmp_path / "train.idx")).read().splitlines() == ["0\t0", "1\t40"]
    flag, = struct.unpack_from("<I", data, 48)
    assert flag == 2 and np.frombuffer(data[72:80], np.float32).tolist() == [1.0, 2.0]


def test_a_record_written_in_parts_reads_back_whole(tmp_path):
    payload = _pack(1.0, b"ab" + b"\0\0" + struct.pack("<I", MAGIC) * 2 + b"tail")
    path = str(tmp_path / "train.rec")
    write_rec(path, [payload])
    assert open(path, "rb").read().count(struct.pack("<I", MAGIC)) == 3  # three parts
    with open(path, "rb") as f:
        assert recordio.read_payload(f, 0) == payload
    labels, image = recordio.unpack(payload)
    assert labels.tolist() == [1.0] and image.endswith(b"tail")


def test_insightface_layout_converts_to_the_same_images_and_labels(tmp_path):
    path, encoded = write_insightface(str(tmp_path / "faces_webface_112x112"))
    out = str(tmp_path / "out")
    manifest = convert.build(path, out, image_size=112, channels=3, test_fraction=0)
    assert manifest.class_names == tuple(str(k) for k in range(6))
    assert "insightface layout" in manifest.values["source"]
    assert manifest.values["source"].endswith("property: 6 classes of 112x112")
    assert manifest.splits["train"].count == 30
    arrays, labels, names = read_records(out)
    for image, label, name in zip(arrays, labels, names):
        key = int(name.split(":")[1])
        assert name.startswith("train.rec:") and label == (key - 1) // 5
        np.testing.assert_array_equal(image, _decoded(encoded[key - 1]))


def test_plain_image_records_without_an_index_convert_resized_to_gray(tmp_path):
    encoded = faces(4, 3)
    labels = [7, 7, 7, 2, 2, 2, 9, 9, 9, 4, 4, 4]
    path = str(tmp_path / "train.rec")
    # Labels as insightface's MXFaceDataset also reads them: the first of several.
    write_rec(path, [_pack([label, 1.0], image) if i % 2 else _pack(label, image)
                     for i, (label, image) in enumerate(zip(labels, encoded))])
    os.remove(str(tmp_path / "train.idx"))
    manifest = convert.build(path, str(tmp_path / "out"), test_fraction=0,
                                   holdout_identities=2, pairs=2)
    assert "one image per record" in manifest.values["source"]
    assert manifest.channels == 1 and manifest.image_size == (50, 50)
    named = manifest.class_names + manifest.holdout_class_names
    assert sorted(named) == ["2", "4", "7", "9"]
    arrays, got, names = read_records(str(tmp_path / "out"))
    for image, label, name in zip(arrays, got, names):
        key = int(name.split(":")[1])
        assert manifest.class_names[label] == str(labels[key])
        # As the same JPEG converted from a folder of photos.
        np.testing.assert_array_equal(image, images.load(io.BytesIO(encoded[key]), 1, 50,
                                                         "crop")[0])


def test_a_bad_record_is_skipped_by_name_and_a_truncated_file_named_where_it_breaks(tmp_path):
    path, encoded = write_insightface(str(tmp_path / "set"))
    index = recordio.read_index(path)
    data = bytearray(open(path, "rb").read())
    # Record 3's JPEG is garbage: skipped, named by its key.
    start = index[3][1] + 8 + 24
    data[start:start + 200] = b"x" * 200
    open(path, "wb").write(bytes(data))
    manifest = convert.build(path, str(tmp_path / "out"), test_fraction=0)
    assert [s["path"] for s in manifest.values["skipped"]] == ["train.rec:03"]
    assert manifest.splits["train"].count == 29
    # Cut inside record 20: the conversion stops naming it, and nothing looks complete.
    open(path, "wb").write(bytes(data[:index[20][1] + 100]))
    with pytest.raises(records.DataError, match=r"truncated: record 20 \(from byte"):
        convert.build(path, str(tmp_path / "cut"), test_fraction=0)
    assert not os.path.exists(str(tmp_path / "cut" / "manifest.json"))


def test_build_records_names_a_truncated_rec_in_one_line(tmp_path, capsys):
    path, _ = write_insightface(str(tmp_path / "set"), identities=2, per_identity=2)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(SystemExit) as info:
        build_records.main(["build_records", path, "--out", str(tmp_path / "out")])
    message = str(info.value)
    assert message.startswith("error: ") and "train.rec is truncated: record 6" in message
    assert "\n" not in message


def test_two_workers_convert_a_rec_to_the_same_records_as_one(tmp_path):
    path, _ = write_insightface(str(tmp_path / "set"))
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    convert.build(path, one, test_fraction=0.2, workers=1)
    convert.build(path, two, test_fraction=0.2, workers=2)
    for split in ("train", "test"):
        a, b = read_records(one, split), read_records(two, split)
        assert a[1:] == b[1:] and all((x == y).all() for x, y in zip(a[0], b[0]))


def _insightface_payloads(identities, per_identity, ranges=None, image_labels=None):
    """Payloads of insightface's layout with tiny images; `ranges` and `image_labels`
    override the identity records' (start, end) and the image records' header labels."""
    n = identities * per_identity
    ranges = ranges or [(1 + k * per_identity, 1 + (k + 1) * per_identity)
                        for k in range(identities)]
    image_labels = image_labels or [i // per_identity for i in range(n)]
    return ([_pack([n + 1, n + 1 + identities])]
            + [_pack(label, b"jpeg", id=i + 1) for i, label in enumerate(image_labels)]
            + [_pack(list(r)) for r in ranges])


@pytest.mark.parametrize("ranges, image_labels, message", [
    ([(1, 4), (3, 7)], None, r"record 8 gives image record 3 to identity 1, but identity 0's "
                             r"range holds it too"),
    ([(1, 4), (4, 10**8)], None, r"record 8 gives identity 1 the image records 4 \.\. "
                                 r"99999999, outside the images 1 \.\. 6"),
    (None, [0, 0, 0, 1, 0, 1], r"image record 5 is labelled 0 in its header but lies in "
                               r"identity 1's range"),
    ([(1, 4), (4, float("nan"))], None, r"record 8 has the label nan, not a whole number"),
])
def test_inconsistent_insightface_ranges_are_refused_by_record(tmp_path, ranges, image_labels,
                                                               message):
    path = str(tmp_path / "train.rec")
    write_rec(path, _insightface_payloads(2, 3, ranges, image_labels))
    with pytest.raises(records.DataError, match=message):
        recordio.identities(path)


@pytest.mark.parametrize("label, shown", [(float("inf"), "inf"), (float("nan"), "nan"),
                                          (-2.0, "-2.0"), (1.5, "1.5")])
def test_a_plain_records_label_that_is_no_class_is_refused_by_record(tmp_path, label, shown):
    path = str(tmp_path / "train.rec")
    write_rec(path, [_pack(0, b"a"), _pack(1, b"b"), _pack(label, b"c")])
    with pytest.raises(records.DataError, match=f"record 2 has the label {shown}, not a whole"):
        recordio.identities(path)


def test_a_damaged_idx_or_property_is_named(tmp_path):
    path = str(tmp_path / "train.rec")
    write_rec(path, [_pack(0, b"a"), _pack(1, b"b")])
    idx = tmp_path / "train.idx"
    good = idx.read_text()
    idx.write_text("0\t0\n1\t-36\n")
    with pytest.raises(records.DataError, match=r"train.idx, line 2: expected `key<TAB>offset` "
                                                r"\(an offset of 0 or more\), got '1\\t-36'"):
        recordio.identities(path)
    idx.write_bytes(b"0\t0\n1\t\xff\n")
    with pytest.raises(records.DataError, match="train.idx is not ASCII text"):
        recordio.identities(path)
    idx.write_text(good)
    (tmp_path / "property").write_bytes(b"2,112,\xe9\n")
    with pytest.raises(records.DataError, match="property is not ASCII text"):
        recordio.identities(path)
