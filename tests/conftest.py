"""Shared fixtures: small synthetic datasets built once per test session."""

import os

import pytest

from data_tools import synth
from kerasbn import train


def make_synth(out, identities=6, images_per_identity=20, encoding="raw", shard_size=32,
               seed=0, image_size=50):
    return synth.build(str(out), identities, images_per_identity, 0.25, image_size, seed,
                       encoding, shard_size, overwrite=False)


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


def run_train(args):
    """Runs `python -m kerasbn.train ARGS` in this process."""
    train.main(["train"] + args)


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
