"""Shared fixtures: small synthetic datasets built once per test session."""

import os

import numpy as np
import pytest
from PIL import Image

from data_tools import convert, inspect_records, synth
from kerasbn import train
from kerasbn.data import records


def make_synth(out, identities=6, images_per_identity=20, encoding="raw", shard_size=32,
               seed=0, image_size=50, overwrite=False):
    return synth.build(str(out), identities, images_per_identity, 0.25, image_size, seed,
                       encoding, shard_size, overwrite=overwrite)


@pytest.fixture(autouse=True)
def float32_policy():
    """Training in-process sets Keras's global dtype policy (a run's --precision); each test
    starts from float32 whatever the one before trained in."""
    import keras
    keras.mixed_precision.set_global_policy("float32")
    yield


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """6 identities x 20 images (90 train / 30 test), raw, 32-record shards."""
    out = tmp_path_factory.mktemp("synth_raw")
    make_synth(out)
    return str(out)


@pytest.fixture(scope="session")
def att_faces():
    path = os.environ.get("KERASBN_ATT_FACES",
                          os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                       "att_faces"))
    if not os.path.isdir(path):
        pytest.skip(f"AT&T faces not found at {path} (set KERASBN_ATT_FACES)")
    return path


def read_records(out, split="train"):
    """(images, labels, image names) of a dataset's split, in shard order."""
    manifest = records.read_manifest(out)
    images, labels, names = [], [], []
    for path in records.split_files(str(out), manifest, split):
        for _, serialized in inspect_records._records(path, manifest.compression):
            image, label, name, _ = inspect_records.decode_record(serialized)
            images.append(image)
            labels.append(label)
            names.append(name)
    return images, labels, names


def run_train(args):
    """Runs `python -m kerasbn.train ARGS` in this process."""
    train.main(["train"] + args)


def run_stopped_then_resumed(args, monkeypatch, iteration):
    """Trains `args` in this process, stopped by SIGTERM at `iteration` (a fault fires once
    per process: give each test its own iteration), then again to resume it."""
    monkeypatch.setenv("KERASBN_FAULT", f"iteration:{iteration}:SIGTERM")
    with pytest.raises(SystemExit):
        run_train(args)
    monkeypatch.delenv("KERASBN_FAULT")
    run_train(args)


def train_args(data_dir, run_dir, **extra):
    """Flags of a small, fast BN run on `data_dir` (extra flags override)."""
    args = {"data_dir": data_dir, "run_dir": run_dir, "model": "bn", "batch_size": 16,
            "max_iter": 30, "test_interval": 10, "display": 5, "snapshot": 10,
            "base_lr": 0.02, "bn_momentum": 0.9, "widths": "16,16,32,24,48,40,64", "seed": 1}
    args.update(extra)
    return [f"--{k}={v}" for k, v in args.items()]


@pytest.fixture(scope="session")
def finished_run(small_data, tmp_path_factory):
    """A finished 40-iteration run on `small_data` (tests at 0, 10, ..., 40)."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    run_train(train_args(small_data, run_dir, max_iter=40))
    return run_dir


FORMATS = [("pgm", "PPM"), ("jpg", "JPEG"), ("png", "PNG"), ("bmp", "BMP"), ("tif", "TIFF")]


@pytest.fixture(scope="session")
def verified_run(tmp_path_factory):
    """A 20-iteration run on synthetic faces with 4 holdout people and 60 holdout pairs."""
    root = tmp_path_factory.mktemp("evaluate")
    data = str(root / "data")
    synth.build(data, 6, 20, 0.25, 50, 0, "raw", 32, False, holdout_identities=4, pairs=60)
    run_dir = str(root / "run")
    run_train(train_args(data, run_dir, max_iter=20, test_interval=10, verify_split="none"))
    return run_dir


def _face(seed, size=(60, 80), mode="L"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + (() if mode == "L" else (3,))
    return Image.fromarray(rng.integers(0, 256, shape, np.uint8), mode)


@pytest.fixture
def folder(tmp_path):
    """4 identities x 5 images in every format, a nested folder, a unicode name, and bad files."""
    root = tmp_path / "faces"
    for person in range(4):
        d = root / f"person{person}"
        d.mkdir(parents=True)
        for i, (ext, fmt) in enumerate(FORMATS):
            target = d / "nested" / f"{i}.{ext}" if i == 4 else d / f"{i}.{ext}"
            target.parent.mkdir(exist_ok=True)
            _face(person * 10 + i, mode="RGB" if ext == "jpg" else "L").save(target, fmt)
    (root / "Zoë").mkdir()
    for i in range(3):
        _face(100 + i).save(root / "Zoë" / f"zoë {i}.png")
    (root / "person0" / "empty.png").write_bytes(b"")
    (root / "person1" / "notes.txt").write_text("not an image")
    data = (root / "person2" / "2.png").read_bytes()
    (root / "person2" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "README.md").write_text("top-level files are not identities")
    return root


def framed_faces(att_faces, root, images=10):
    """Photos of AT&T people 1-3 (their first `images`), each set in a larger gray canvas
    where MTCNN finds it, in one folder per person under `root`."""
    for person in (1, 2, 3):
        (root / f"s{person}").mkdir(parents=True)
        for image in range(1, images + 1):
            canvas = Image.new("L", (200, 220), 128)
            canvas.paste(Image.open(os.path.join(att_faces, f"s{person}", f"{image}.pgm")),
                         (50 + 3 * image, 50))
            canvas.save(root / f"s{person}" / f"{image}.png")
    return root


def build_folder(source, out, **kw):
    """convert.build of a folder tree, quietly, in 6-record shards by default."""
    kw.setdefault("shard_size", 6)
    return convert.build(str(source), str(out), log=lambda _: None, **kw)


# Fixtures that train (or export) a network: a test taking one is slow however quick its own
# body is, so it leaves the fast tier (./test.sh -m "not slow") with them.
TRAINING_FIXTURES = {"finished_run", "verified_run", "lfw_like", "bfloat16_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
