"""The embedded default dataset: synthetic grayscale faces, one fixed geometry per identity.

Each identity draws its head shape, skin and hair tone, hairline, eye, brow, nose and mouth
geometry, glasses and beard once; each image then varies pose (roll, yaw, shift, scale),
expression, illumination direction, background, noise and occlusion. Pose variation keeps a
linear classifier on pixels well below a small CNN (BENCHMARKS.md), so the set tests what
convolutional networks learn. Deterministic by --seed; images are rendered in vectorised
batches and streamed to shards, so memory stays flat at millions of images.

    python -m data_tools.synth --out /tmp/faces
    python -m data_tools.synth --out data/synth_rgb32 --channels 3 --image_size 32   # CIFAR-shaped
"""

import os
import sys
import time

import numpy as np
from absl import flags

from data_tools import shards
from data_tools.workers import ordered_map
from kerasbn.data import checks, records
from kerasbn.flags import cli
from kerasbn.utils import errors
from kerasbn.utils.progress import Progress

RENDER_BATCH = 512
_SPLIT_STREAM = {"train": 1, "test": 2, "holdout": 3}


def identity_params(seed, num_identities, stream=0):
    """Per-identity face geometry, arrays of shape [num_identities]; coordinates in face units.

    Stream 0 draws the training identities, stream 1 the held-out ones, so adding held-out
    identities leaves the training ones (and their records) as they were."""
    rng = np.random.default_rng([seed, 0] if stream == 0 else [seed, 0, stream])
    u = lambda lo, hi: rng.uniform(lo, hi, num_identities)
    return {
        "head_a": u(0.50, 0.68), "head_b": u(0.66, 0.86), "skin": u(105, 205),
        "hair_tone": np.where(rng.random(num_identities) < 0.15, u(170, 230), u(15, 110)),
        "hairline": u(-0.62, -0.25), "hair_len": u(-0.3, 0.7), "hair_puff": u(0.03, 0.18),
        "eye_dx": u(0.17, 0.32), "eye_y": u(-0.16, 0.02), "eye_w": u(0.06, 0.13),
        "eye_h": u(0.03, 0.065), "eye_tone": u(5, 70),
        "brow_gap": u(0.07, 0.16), "brow_tilt": u(-0.35, 0.35), "brow_thick": u(0.018, 0.045),
        "brow_len": u(0.08, 0.15),
        "nose_y": u(0.10, 0.28), "nose_len": u(0.08, 0.22), "nose_w": u(0.035, 0.09),
        "mouth_y": u(0.36, 0.55), "mouth_w": u(0.12, 0.30), "mouth_curve": u(-0.9, 0.9),
        "mouth_thick": u(0.02, 0.05), "lip_tone": u(0.45, 0.8),
        "glasses": (rng.random(num_identities) < 0.2).astype(float),
        "beard": (rng.random(num_identities) < 0.2).astype(float),
    }


def identity_tints(seed, num_identities, stream=0):
    """Per-identity RGB tints [num_identities, 3] for --channels 3, from a stream of their own,
    so the gray faces (and a gray dataset's bytes) stay as they were."""
    rng = np.random.default_rng([seed, 0, stream, 3])
    return rng.uniform(0.6, 1.4, (num_identities, 3))


def colorize(gray, tints, rng):
    """uint8 [n, H, W] gray faces -> [n, H, W, 3]: each identity's tint times a per-image
    colour cast (white balance), so colour carries identity as skin and hair tone do."""
    cast = rng.normal(1.0, 0.03, (len(gray), 1, 1, 3))
    rgb = gray[..., None].astype(np.float64) * tints[:, None, None, :] * cast
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _ellipse(x, y, cx, cy, a, b, pixel):
    """Soft mask of an ellipse, ramping over about one pixel at its edge."""
    r = np.sqrt(np.square((x - cx) / a) + np.square((y - cy) / b))
    return np.clip((1.0 - r) * np.minimum(a, b) / pixel + 0.5, 0.0, 1.0)


def _band(dist, half_width, pixel):
    """Soft mask of the points within half_width of a curve, given their distance to it."""
    return np.clip((half_width - np.abs(dist)) / pixel + 0.5, 0.0, 1.0)


def _paint(canvas, mask, tone):
    return canvas + mask * (tone - canvas)


def render(p, rng, size):
    """Renders one image per entry of the identity parameters `p` (arrays of shape [n]).

    Returns uint8 [n, size, size]. Per-image variation is drawn from `rng`.
    """
    n = len(p["skin"])
    col = lambda v: np.asarray(v, dtype=np.float64).reshape(n, 1, 1)
    p = {k: col(v) for k, v in p.items()}
    draw = lambda f, *a: col(f(*a, n))
    grid = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    u, v = grid[None, None, :], grid[None, :, None]

    roll, scale = draw(rng.normal, 0.0, 0.15), draw(rng.uniform, 0.8, 1.15)
    tx, ty = draw(rng.normal, 0.0, 0.1), draw(rng.normal, 0.0, 0.1)
    yaw = draw(rng.uniform, -1.0, 1.0)
    cos, sin = np.cos(roll), np.sin(roll)
    x = (cos * (u - tx) + sin * (v - ty)) / scale
    y = (-sin * (u - tx) + cos * (v - ty)) / scale
    pixel = 2.0 / size / scale
    shift = 0.13 * yaw

    background = draw(rng.uniform, 20, 235) + draw(rng.normal, 0, 25) * u
    img = np.broadcast_to(background, (n, size, size)).copy()
    hair_mask = _ellipse(x, y, 0.04 * yaw, -0.05, p["head_a"] + p["hair_puff"],
                         p["head_b"] + p["hair_puff"], pixel)
    hair_mask = hair_mask * np.clip((p["hair_len"] - y) / pixel, 0, 1)
    img = _paint(img, hair_mask, p["hair_tone"])
    head = _ellipse(x, y, 0.04 * yaw, 0.0, p["head_a"] * (1 - 0.08 * np.abs(yaw)), p["head_b"],
                    pixel)
    img = _paint(img, head, p["skin"])
    img = _paint(img, head * np.clip((p["hairline"] - y) / pixel + 0.5, 0, 1), p["hair_tone"])
    jaw = head * np.clip((y - p["mouth_y"] + 0.12) / pixel, 0, 1)
    img = _paint(img, p["beard"] * jaw * 0.85, 0.45 * p["hair_tone"])

    blink = draw(rng.uniform, 0.35, 1.25)
    for side in (-1.0, 1.0):
        ex = side * p["eye_dx"] * (1 - 0.25 * side * yaw) + shift
        img = _paint(img, _ellipse(x, y, ex, p["eye_y"], p["eye_w"], p["eye_h"] * blink, pixel),
                     p["eye_tone"])
        by = p["eye_y"] - p["brow_gap"]
        tilt = side * p["brow_tilt"]
        dist = (y - by) - tilt * (x - ex)
        along = np.clip((p["brow_len"] - np.abs(x - ex)) / pixel, 0, 1)
        img = _paint(img, _band(dist, p["brow_thick"], pixel) * along, 0.5 * p["hair_tone"])
        ring = np.sqrt(np.square((x - ex) / (p["eye_w"] + 0.06))
                       + np.square((y - p["eye_y"]) / (p["eye_h"] + 0.07)))
        img = _paint(img, p["glasses"] * _band((ring - 1.0) * 0.08, 0.012, pixel), 25.0)

    nose = _ellipse(x, y, shift * 1.3, p["nose_y"], p["nose_w"], p["nose_len"], pixel)
    img = _paint(img, nose * 0.55, 0.7 * p["skin"])
    curve = p["mouth_curve"] + draw(rng.normal, 0.0, 0.35)
    mx = x - shift
    mouth_dist = y - (p["mouth_y"] - curve * (np.square(mx) - np.square(p["mouth_w"]) / 3))
    mouth_along = np.clip((p["mouth_w"] - np.abs(mx)) / pixel, 0, 1)
    img = _paint(img, _band(mouth_dist, p["mouth_thick"], pixel) * mouth_along,
                 p["lip_tone"] * p["skin"])

    angle = draw(rng.uniform, 0, 2 * np.pi)
    light = 1.0 + draw(rng.uniform, 0.0, 0.6) * (np.cos(angle) * u + np.sin(angle) * v)
    img = img * light * draw(rng.uniform, 0.7, 1.3)

    occluded = draw(rng.random) < 0.25
    cx, cy = draw(rng.uniform, -0.8, 0.8), draw(rng.uniform, -0.8, 0.8)
    w, h = draw(rng.uniform, 0.15, 0.45), draw(rng.uniform, 0.15, 0.45)
    patch = occluded & (np.abs(u - cx) < w) & (np.abs(v - cy) < h)
    img = np.where(patch, draw(rng.uniform, 0, 255), img)

    img = img + draw(rng.uniform, 2, 12) * rng.standard_normal((n, size, size))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def split_sizes(images_per_identity, test_fraction):
    """(train, test) images per identity; each split keeps at least one image per identity."""
    test = int(round(images_per_identity * test_fraction))
    test = min(max(test, 1), images_per_identity - 1)
    return images_per_identity - test, test


def write_split(out, split, params, first, count, size, seed, encoding, shard_size, progress,
                prefix="id", tints=None, work=map):
    """Renders images first..first+count-1 of every identity, in a seeded shuffled order;
    in colour with the identities' `tints`. Batches are rendered and encoded by `work` (a
    map: workers.ordered_map's over several processes), each from its own seed, so the bytes
    do not depend on how many processes drew them.

    Returns the split's manifest entry and its pixel (mean, std).
    """
    num_identities = len(params["skin"])
    total = num_identities * count
    order = np.random.default_rng([seed, _SPLIT_STREAM[split], 0]).permutation(total)
    channels = 1 if tints is None else 3
    writer = shards.ShardWriter(out, split, total, shard_size, channels=channels)

    def jobs():
        for batch, start in enumerate(range(0, total, RENDER_BATCH)):
            picked = order[start:start + RENDER_BATCH]
            labels = picked // count
            yield (labels, first + picked % count, {k: v[labels] for k, v in params.items()},
                   None if tints is None else tints[labels],
                   [seed, _SPLIT_STREAM[split], batch + 1], size, encoding, prefix)

    for images, serialized in work(_render_batch, jobs()):
        for image, record in zip(images, serialized):
            writer.write(record, image)
        progress.update(len(images))
    return writer.close(), writer.stats.mean_std()


def _render_batch(job):
    """(images, serialized records) of one batch: its identities' labels and image indices,
    their parameters and tints, and the batch's own seed."""
    labels, indices, params, tints, seed, (height, width), encoding, prefix = job
    rng = np.random.default_rng(seed)
    # A face drawn on the square of the longer side, its centre kept: a 112x96 crop is the
    # middle of a 112x112 one, as the field's 112x96 template is.
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    gray = render(params, rng, side)[:, top:top + height, left:left + width]
    images = gray[..., None] if tints is None else colorize(gray, tints, rng)
    serialized = [records.encode_example(image, label, encoding,
                                         f"{prefix}{label:05d}/{index:05d}.png")
                  for image, label, index in zip(images, labels, indices)]
    return images, serialized


def build(out, identities, images_per_identity, test_fraction, image_size, seed, encoding,
          shard_size, overwrite, command="", holdout_identities=0, pairs=0, channels=1,
          workers=1):
    """Writes the synthetic dataset to `out`; returns its manifest.

    `holdout_identities` more identities (drawn apart, so the train and test records of a
    seed stay the same) go to a `holdout` split, with `pairs` matched and `pairs` mismatched
    pairs of them in pairs.txt, for verification on people the network never saw. `workers`
    processes render and encode; the bytes are the same for any number. `image_size` is
    one side (square) or [height, width]."""
    image_size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
    if identities < 2 or images_per_identity < 2:
        raise errors.UserError("--identities and --images_per_identity must both be at least 2")
    if not 0 < test_fraction < 1:
        raise errors.UserError(f"--test_fraction must lie in (0, 1), got {test_fraction}")
    if min(image_size) < 16 or shard_size < 1:
        raise errors.UserError(f"--image_size must be at least 16 (faces are drawn at that "
                               f"scale) and --shard_size at least 1, got "
                               f"{','.join(map(str, image_size))} and {shard_size}")
    if workers < 1:
        raise errors.UserError(f"--workers must be at least 1, got {workers}")
    if channels not in (1, 3):
        raise errors.UserError(f"--channels must be 1 (gray) or 3 (RGB), got {channels}")
    if pairs and holdout_identities < 2:
        raise errors.UserError("--pairs needs --holdout_identities of at least 2 (pairs are drawn "
                         "from them)")
    shards.prepare_out_dir(out, overwrite)
    params = identity_params(seed, identities)
    tints = identity_tints(seed, identities) if channels == 3 else None
    n_train, n_test = split_sizes(images_per_identity, test_fraction)
    progress = Progress((identities + holdout_identities) * images_per_identity, "synth")
    with ordered_map(workers) as work:
        train, (mean, std) = write_split(out, "train", params, 0, n_train, image_size, seed,
                                         encoding, shard_size, progress, tints=tints,
                                         work=work)
        test, _ = write_split(out, "test", params, n_train, n_test, image_size, seed,
                              encoding, shard_size, progress, tints=tints, work=work)
        holdout = write_split(
            out, "holdout", identity_params(seed, holdout_identities, stream=1), 0,
            images_per_identity, image_size, seed, encoding, shard_size, progress,
            prefix="holdout", work=work,
            tints=identity_tints(seed, holdout_identities, 1) if channels == 3 else None,
        )[0] if holdout_identities else None
    manifest = {
        "image_size": image_size, "channels": channels, "encoding": encoding,
        "compression": "",
        "class_names": [f"id{i:05d}" for i in range(identities)],
        "splits": {"train": train, "test": test},
        "mean": mean, "std": std, "skipped": [], "command": command,
        "source": "synthetic faces (data_tools.synth)",
        # Rendered at the size; a photo served later is cropped and resized, as by default
        # in build_records.
        "resize_mode": "crop",
    }
    if holdout_identities:
        manifest["splits"]["holdout"] = holdout
        names = [f"holdout{i:05d}" for i in range(holdout_identities)]
        manifest["holdout_class_names"] = names
        if pairs:
            written = [(label, f"holdout{label:05d}/{index:05d}.png")
                       for label in range(holdout_identities)
                       for index in range(images_per_identity)]
            shards.write_pairs(os.path.join(out, shards.PAIRS_NAME), names, written, pairs,
                               seed)
            manifest["pairs"] = {"file": shards.PAIRS_NAME, "matched": pairs,
                                 "mismatched": pairs}
    records.write_manifest(out, manifest)
    written = records.read_manifest(out)
    checks.mark_written(out, written)
    return written


def main(argv):
    values, args = cli.parse(argv, define_flags, __doc__)
    if not values.out:
        sys.exit("error: --out is required: the directory to write the dataset into")
    cli.check_writable(values.out, by_tensorflow=True)
    start = time.perf_counter()
    manifest = cli.run(lambda: build(
        values.out, values.identities, values.images_per_identity, values.test_fraction,
        values.image_size, values.seed, values.encoding, values.shard_size, values.overwrite,
        command="python -m data_tools.synth " + " ".join(sys.argv[1:]),
        holdout_identities=values.holdout_identities, pairs=values.pairs,
        channels=values.channels, workers=values.workers),
        f"no manifest.json was written, so {values.out} is no dataset yet; rerun the same "
        "command")
    seconds = time.perf_counter() - start
    counts = {split: info.count for split, info in manifest.splits.items()}
    total = sum(counts.values())
    print(f"wrote {os.path.abspath(values.out)}: {counts} in {seconds:.1f}s "
          f"({total / seconds:.0f} images/s)")


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("out", None, "Directory to write the shards and manifest.json into.", **on)
    flags.DEFINE_integer("identities", 50, "Number of identities (classes).", lower_bound=2, **on)
    flags.DEFINE_integer("images_per_identity", 150, "Images per identity, train and test together.",
                         lower_bound=2, **on)
    flags.DEFINE_float("test_fraction", 0.2, "Fraction of each identity's images in the test split.",
                       lower_bound=0, upper_bound=1, **on)
    flags.DEFINE_integer("channels", 1, "1: gray faces; 3: RGB, each identity tinted (a "
                         "stand-in for CIFAR-10-shaped data: --channels 3 --image_size 32).",
                         lower_bound=1, upper_bound=3, **on)
    cli.define_image_size(values, "50", "Height and width of the images")
    flags.DEFINE_integer("seed", 0, "Seed: the same seed and flags give the same bytes.",
                         lower_bound=0, **on)
    flags.DEFINE_enum("encoding", "raw", records.ENCODINGS, "How images are stored in the records.",
                      **on)
    flags.DEFINE_integer("shard_size", 8192, "Records per shard.", lower_bound=1, **on)
    flags.DEFINE_bool("overwrite", False, "Replace a dataset already in --out.", **on)
    flags.DEFINE_integer("holdout_identities", 0, "More identities, never trained on, in a "
                         "holdout split (the train and test records stay as without them).",
                         lower_bound=0, **on)
    flags.DEFINE_integer("pairs", 0, "Matched and mismatched holdout pairs in pairs.txt (LFW "
                         "format), for verification.", lower_bound=0, **on)
    flags.DEFINE_integer("workers", 1, "Processes rendering and encoding; the bytes are the "
                         "same for any number.", lower_bound=1, upper_bound=256, **on)


if __name__ == "__main__":
    main(sys.argv)
