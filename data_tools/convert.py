"""A face collection converted to sharded TFRecords + manifest.json: identities split, images
read and encoded by a pool of workers, shards written whole and resumable. `python -m
data_tools.build_records` (its docstring says what each source and split is) and the
converter benchmark call `build`."""

import collections
import contextlib
import hashlib
import json
import os
import shutil
import time

import numpy as np
from PIL import Image

from data_tools import recordio, shards, sources
from data_tools.workers import ordered_map
from kerasbn.data import checks, images, records
from kerasbn.faces import photo_alignment
from kerasbn.utils import atomic, console, dir_lock
from kerasbn.utils.progress import Progress


STATE_DIR = ".build"
ENCODE_BATCH = 32


def read_boxes(path):
    """{file name or relative path: (x, y, w, h)} of a `file,x,y,w,h` CSV of detected faces."""
    boxes = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = [x.strip() for x in line.strip().split(",")]
            if not line.strip() or (number == 1 and fields[-1].isalpha()):
                continue
            try:
                if len(fields) != 5:
                    raise ValueError
                boxes[fields[0]] = tuple(int(float(v)) for v in fields[1:])
            except ValueError:
                raise records.DataError(f"{path}:{number}: expected `file,x,y,w,h`, got "
                                        f"{line.strip()!r}") from None
    return boxes


def read_landmarks(path):
    """{file name or relative path: [5, 2] landmarks} of a landmarks file: per line a photo
    and its five points (the template's order: left eye, right eye, nose, mouth left, mouth
    right) as `path x1 y1 ... x5 y5`, or an insightface .lst line (`flag<TAB>path<TAB>label
    <TAB>x y x y` box `<TAB>` five x then five y, as face2rec reads them)."""
    points, rows = {}, {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        raise records.DataError(f"{path} is not UTF-8 text (byte {e.start}); give `path x1 y1 "
                                "... x5 y5` lines") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            if len(fields) == 11:
                name, values = fields[0], np.array(fields[1:], np.float64).reshape(5, 2)
            elif len(fields) == 17:
                name, values = fields[1], np.array(fields[7:], np.float64).reshape(2, 5).T
            else:
                raise ValueError
            if not np.all(np.isfinite(values)):
                raise ValueError
        except ValueError:
            raise records.DataError(f"{path}:{number}: expected `path x1 y1 ... x5 y5` (or an "
                                    f"insightface .lst line), got {line.strip()!r}") from None
        if name in points:
            raise records.DataError(f"{path}:{number}: {name} has a row already (line "
                                    f"{rows[name]}); give each photo one row")
        points[name], rows[name] = values, number
    return points


def split_identities(identities, test_fraction, holdout_identities, min_images, seed):
    """Deterministic splits of {name: items}.

    Returns ({split: [(label, item)] in shuffled order}, class names, holdout names, dropped
    identity count). Holdout identities are drawn first; each remaining identity sends
    round(n * test_fraction) of its images (at least one when it has two or more) to test.
    """
    kept = sorted(name for name, items in identities.items() if len(items) >= min_images)
    dropped = len(identities) - len(kept)
    if holdout_identities >= len(kept):
        raise records.DataError(f"--holdout_identities={holdout_identities} leaves no identity "
                                f"to train on ({len(kept)} have >= {min_images} images)")
    rng = np.random.default_rng([seed, 0])
    holdout = sorted(rng.choice(kept, holdout_identities, replace=False).tolist()
                     if holdout_identities else [])
    classes = [name for name in kept if name not in set(holdout)]
    splits = {"train": [], "test": [], "holdout": []}
    for label, name in enumerate(holdout):
        splits["holdout"] += [(label, item) for item in identities[name]]
    for label, name in enumerate(classes):
        items = list(identities[name])
        order = np.random.default_rng([seed, 1, label]).permutation(len(items))
        n_test = int(round(len(items) * test_fraction))
        if test_fraction > 0 and len(items) >= 2:
            n_test = min(max(n_test, 1), len(items) - 1)
        splits["test"] += [(label, items[i]) for i in order[:n_test]]
        splits["train"] += [(label, items[i]) for i in order[n_test:]]
    for index, split in enumerate(("train", "test", "holdout")):
        order = np.random.default_rng([seed, 2, index]).permutation(len(splits[split]))
        splits[split] = [splits[split][i] for i in order]
    return splits, classes, holdout, dropped


class Encoder:
    """Turns (label, (name, source)) items into serialized records, in --workers processes
    when there are several, so the main process only writes. Workers run Pillow, numpy and
    protobuf, never a TensorFlow op, so forking after TensorFlow has loaded is safe."""

    def __init__(self, workers):
        self.args = self.boxes = None
        # Started before the source is listed, so the workers load Pillow's plugins while
        # the main process walks the folders.
        self._pool = contextlib.ExitStack()
        self._map = self._pool.enter_context(ordered_map(workers, initializer=Image.init))

    def configure(self, args, boxes, landmarks=None):
        self.args, self.boxes, self.landmarks = args, boxes, landmarks or {}

    def encode(self, chunk):
        """Per batch of items: ([(name, label, serialized or None, skip reason)], PixelStats
        of the batch's images). Batches keep the main process's share of the work small."""
        known = lambda table, name: table.get(name, table.get(os.path.basename(name)))
        jobs = [([(label, name, source, known(self.boxes, name), known(self.landmarks, name))
                  for label, (name, source) in chunk[i:i + ENCODE_BATCH]], self.args)
                for i in range(0, len(chunk), ENCODE_BATCH)]
        return self._map(_encode_batch, jobs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.close()


def _encode_batch(job):
    items, args = job
    options = (args["channels"], args["image_size"], args["resize_mode"])
    stats = shards.PixelStats(args["channels"])
    results = []
    for label, name, source, box, points in items:
        if isinstance(source, str) and (args["align"] or points is not None):
            array, reason = _aligned(source, name, points, args)
        elif isinstance(source, str):
            array, reason = images.load(source, *options, box)
        elif isinstance(source, tuple):
            array, reason = recordio.load(source, *options)
        else:
            array, reason = images.to_array(Image.fromarray(source), *options), None
        if array is None:
            results.append((name, label, None, reason))
            continue
        stats.add(array)
        results.append((name, label, records.encode_example(array, label, args["encoding"],
                                                            name), None))
    return results, stats


def _check_landmarks(points, splits, path):
    """DataError naming the first photo of `splits` the landmarks file has no row for, or
    whose row names only a file name that several photos share (which row is whose?)."""
    names = [name for items in splits.values() for _, (name, _) in items]
    sharing = collections.Counter(os.path.basename(name) for name in names)
    for name in names:
        if name in points:
            continue
        base = os.path.basename(name)
        if base not in points:
            raise records.DataError(f"{path} has no row for {name}; give every photo its "
                                    "five points, or drop it from the source")
        if sharing[base] > 1:
            raise records.DataError(f"{path} names {base} alone, a file name {sharing[base]} "
                                    f"photos of the source share ({name} is one); key their "
                                    "rows by their paths relative to the source")


def _aligned(path, name, points, args):
    """(the aligned crop of the photo at `path`, None) or (None, why not): its largest face
    found by the detector, or placed by the landmarks file's `points`."""
    height, width = args["image_size"]
    settings = photo_alignment.Settings(height, width, args["channels"])
    try:
        entry, crops = photo_alignment.align_photo(path, settings, points)
    except ValueError as e:
        raise records.DataError(f"{args['landmarks']}: the landmarks of {name} {e}; fix that "
                                "row") from None
    return (crops[0], None) if len(crops) else (None, entry["reason"])




def _state_path(out, name):
    return os.path.join(out, STATE_DIR, name + ".json")


def write_split(out, split, items, encoder, args, progress):
    """Writes one split's shards, reusing complete ones from an interrupted run.

    `items` are (label, (name, source)). Returns (manifest entry, PixelStats, skipped list,
    [(label, name)] of the written records).
    """
    num_shards = max(1, -(-len(items) // args["shard_size"]))
    entry = {"files": [], "file_counts": [], "count": 0}
    stats = shards.PixelStats(args["channels"])
    skipped, written = [], []
    for index in range(num_shards):
        chunk = items[index * args["shard_size"]:(index + 1) * args["shard_size"]]
        name = records.shard_name(split, index, num_shards)
        path, state_path = os.path.join(out, name), _state_path(out, name)
        if os.path.exists(path) and os.path.exists(state_path):
            with open(state_path, encoding="utf-8") as f:
                state = json.load(f)
        else:
            state = _write_shard(path, chunk, encoder, args)
            atomic.write_json(state_path, state, indent=None)
        progress.update(len(chunk))
        if state["count"]:
            entry["files"].append(name)
            entry["file_counts"].append(state["count"])
            entry["count"] += state["count"]
        elif os.path.exists(path):
            os.remove(path)
        stats.merge(shards.PixelStats(args["channels"], state["stats"]))
        skipped += state["skipped"]
        written += [tuple(w) for w in state["written"]]
    return entry, stats, skipped, written


def _write_shard(path, chunk, encoder, args):
    stats = shards.PixelStats(args["channels"])
    skipped, written = [], []
    with shards.shard_writer(path, args["compression"]) as writer:
        for results, batch_stats in encoder.encode(chunk):
            stats.merge(batch_stats)
            for name, label, serialized, reason in results:
                if serialized is None:
                    skipped.append({"path": name, "reason": reason})
                    continue
                writer.write(serialized)
                written.append((label, name))
    return {"count": len(written), "stats": stats.state(), "skipped": skipped,
            "written": written}


def collect(source, root, image_size, channels, test_fraction, holdout_identities,
            min_images, seed, out=None, allow_outside_root=False,
            extensions=images.IMAGE_EXTENSIONS):
    """Reads the source listing (never the output directory `out`, should it lie inside);
    returns (splits, class names, holdout names, dropped, channels, image size,
    description, [(path, reason)] of a folder's files that are not images)."""
    if sources.is_cifar10(source):
        if holdout_identities:
            raise records.DataError("--holdout_identities does not apply to CIFAR-10, whose "
                                    "train/test split is kept")
        train, test, names = sources.cifar10(source)
        rng = np.random.default_rng([seed, 2])
        splits = {"holdout": []}
        for split, per_class in (("train", train), ("test", test)):
            items = [(label, (f"{split}/{name}/{i:05d}", image))
                     for label, name in enumerate(names)
                     for i, image in enumerate(per_class[name])]
            splits[split] = [items[i] for i in rng.permutation(len(items))]
        return (splits, names, [], 0, channels or 3, image_size or [32, 32],
                "CIFAR-10 python batches (official split)", [])
    if source.endswith(".rec") and os.path.isfile(source):
        listing, description = recordio.identities(source)
        splits, classes, holdout, dropped = split_identities(
            listing, test_fraction, holdout_identities, min_images, seed)
        return (splits, classes, holdout, dropped, channels or 1, image_size or [50, 50],
                description, [])
    left_out = []
    if os.path.isdir(source):
        (listing, left_out), base, kind = sources.folder_tree(
            source, out, extensions), source, "folder tree"
    elif os.path.isfile(source):
        base = root or os.path.dirname(os.path.abspath(source))
        listing, kind = sources.list_file(source, base, allow_outside_root), "list file"
    else:
        raise records.DataError(f"{source} does not exist; give a folder with one subfolder "
                                "per identity, a `path label` list file, an insightface "
                                "train.rec, or cifar-10-batches-py")
    identities = {name: [(os.path.relpath(p, base), p) for p in paths]
                  for name, paths in listing.items()}
    splits, classes, holdout, dropped = split_identities(
        identities, test_fraction, holdout_identities, min_images, seed)
    return (splits, classes, holdout, dropped, channels or 1, image_size or [50, 50],
            f"{kind} {os.path.abspath(source)}",
            [(os.path.relpath(path, base), reason) for path, reason in left_out])


def _listing_digest(splits):
    """A digest of what a build reads: each split's labels and names and, for a file, its
    size and modification time, so a resumed build continues only the same source."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        for label, (name, source) in splits[split]:
            stat = os.stat(source) if isinstance(source, str) else None
            digest.update(json.dumps([split, label, name, stat and stat.st_size,
                                      stat and stat.st_mtime_ns]).encode("utf-8", "replace"))
    return digest.hexdigest()


def _prepare(out, args, overwrite, log):
    """Readies --out: refuses another dataset without --overwrite; keeps the complete shards
    of an interrupted run with the same arguments and source, clears those of one with
    others (saying so)."""
    shards.prepare_out_dir(out, overwrite)
    state_dir = os.path.join(out, STATE_DIR)
    args_path = os.path.join(state_dir, "args.json")
    if os.path.exists(args_path):
        with open(args_path, encoding="utf-8") as f:
            same = json.load(f) == args
        if not same:
            log(f"{out} holds an interrupted build of another source or settings: starting "
                "over")
            shutil.rmtree(state_dir)
            for name in os.listdir(out):
                if shards.is_shard(name):
                    os.remove(os.path.join(out, name))
    os.makedirs(state_dir, exist_ok=True)
    atomic.write_json(args_path, args, indent=None)


def _check_settings(image_size, test_fraction, pairs, holdout_identities, shard_size, workers,
                    encoding):
    """Raises DataError naming the first of `build`'s settings that cannot work."""
    if image_size is not None and min(image_size) < 1:
        raise records.DataError(f"--image_size must be at least 1, got "
                                f"{','.join(map(str, dict.fromkeys(image_size)))}")
    if not 0 <= test_fraction < 1:
        raise records.DataError(f"--test_fraction must lie in [0, 1), got {test_fraction}")
    if pairs and not holdout_identities:
        raise records.DataError("--pairs needs --holdout_identities (pairs are drawn from them)")
    if shard_size < 1 or workers < 1:
        raise records.DataError("--shard_size and --workers must be at least 1")
    if encoding not in ("raw", "png"):
        raise records.DataError(f"--encoding must be raw or png, got {encoding!r}")


def _manifest(args, classes, holdout, splits, train_stats, skipped, dropped, description,
              command, left_out):
    """manifest.json's values (less the pairs) of a build with settings `args`."""
    mean, std = train_stats.mean_std()
    manifest = {
        "image_size": list(args["image_size"]), "channels": args["channels"],
        "encoding": args["encoding"], "compression": args["compression"],
        "class_names": classes, "holdout_class_names": holdout, "splits": splits,
        "mean": mean, "std": std, "skipped": skipped, "dropped_identities": dropped,
        "source": description, "command": command,
        "label_order": "identities sorted by name (list files: by numeric label)",
        "resize_mode": args["resize_mode"],
        "left_out": [{"path": path, "reason": reason} for path, reason in left_out],
    }
    if args["align"] or args["landmarks"]:
        landmarks = args["landmarks"]
        manifest["aligned"] = {
            "by": f"landmarks from {os.path.abspath(landmarks)}" if landmarks
            else "MTCNN's largest face (the mtcnn package)", "template": "insightface "
            "arcface_dst, scaled as kerasbn.faces.template says",
            "faces_missing": sum(item["reason"] == photo_alignment.NO_FACE for item in skipped)}
    return manifest


def _report(out, splits, classes, skipped, left_out, dropped, seconds, log):
    """Logs what a build wrote, skipped and left out."""
    counts = {split: entry["count"] for split, entry in splits.items()}
    log(f"wrote {os.path.abspath(out)}: {counts}, {len(classes)} classes, "
        f"{len(skipped)} skipped, {len(left_out)} files left out (not images), "
        f"{dropped} identities dropped, {seconds:.1f}s "
        f"({sum(counts.values()) / seconds:.0f} images/s)")
    for line in console.at_most([f"  skipped {s['path']}: {s['reason']}" for s in skipped],
                                20, "listed in manifest.json") + console.at_most(
            [f"  left out {path}: {reason}" for path, reason in left_out], 5,
            "listed in manifest.json (left_out)"):
        log(line)


def build(source, out, root=None, image_size=None, channels=None, resize_mode="crop",
          boxes=None, test_fraction=0.2, holdout_identities=0, pairs=0,
          min_images_per_identity=1, seed=0, shard_size=4096, encoding="raw",
          compression="", workers=1, overwrite=False, command="", log=print,
          allow_outside_root=False, extensions=images.IMAGE_EXTENSIONS, align=False,
          landmarks=None):
    """Converts `source` to shards + manifest in `out`; returns the manifest. `align` finds
    each photo's largest face and aligns it (kerasbn.faces); `landmarks` (a file) aligns with
    the five points it gives each photo instead. `image_size` is one side (square) or
    [height, width]."""
    if image_size is not None:
        image_size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
    _check_settings(image_size, test_fraction, pairs, holdout_identities, shard_size, workers,
                    encoding)
    shards.check_out_dir(out)
    busy = lambda holder: records.DataError(
        f"--out={out} is being written by another build (pid {holder}); wait for it, or "
        "choose another --out")
    with dir_lock.held(out, busy):
        start = time.perf_counter()
        aligning = bool(align or landmarks)
        # Alignment runs TensorFlow (the detector, the warp), which forked workers must not.
        with Encoder(1 if aligning else workers) as encoder:
            (splits, classes, holdout, dropped, channels, image_size, description,
             left_out) = collect(source, root, image_size, channels, test_fraction,
                                 holdout_identities, min_images_per_identity, seed, out,
                                 allow_outside_root, extensions)
            args = {"source": os.path.abspath(source), "root": root, "image_size": image_size,
                    "channels": channels, "resize_mode": resize_mode, "boxes": boxes,
                    "test_fraction": test_fraction, "holdout_identities": holdout_identities,
                    "min_images_per_identity": min_images_per_identity, "seed": seed,
                    "shard_size": shard_size, "encoding": encoding, "compression": compression,
                    "extensions": sorted(extensions), "align": bool(align),
                    "landmarks": landmarks, "listing": _listing_digest(splits)}
            points = read_landmarks(landmarks) if landmarks else None
            if points is not None:
                _check_landmarks(points, splits, landmarks)
            encoder.configure(args, read_boxes(boxes) if boxes else {}, points)
            _prepare(out, args, overwrite, log)
            progress = Progress(sum(len(items) for items in splits.values()), "build_records")
            manifest_splits, skipped, train_stats, holdout_written = {}, [], None, []
            for split in ("train", "test", "holdout"):
                if not splits[split]:
                    continue
                entry, stats, split_skipped, written = write_split(
                    out, split, splits[split], encoder, args, progress)
                manifest_splits[split] = entry
                skipped += [dict(s, split=split) for s in split_skipped]
                if split == "train":
                    train_stats = stats
                if split == "holdout":
                    holdout_written = written
        if not manifest_splits.get("train", {}).get("count"):
            raise records.DataError(f"no training image of {source} could be read "
                                    f"({len(skipped)} skipped); see the reasons above")
        manifest = _manifest(args, classes, holdout, manifest_splits, train_stats, skipped,
                             dropped, description, command, left_out)
        if pairs:
            shards.write_pairs(os.path.join(out, shards.PAIRS_NAME), holdout, holdout_written,
                               pairs, seed)
            manifest["pairs"] = {"file": shards.PAIRS_NAME, "matched": pairs, "mismatched": pairs,
                                 "numbering": "1-based position among the identity's holdout "
                                              "records sorted by image/filename"}
        records.write_manifest(out, manifest)
        written = records.read_manifest(out)
        checks.mark_written(out, written)
        shutil.rmtree(os.path.join(out, STATE_DIR))
        _report(out, manifest_splits, classes, skipped, left_out, dropped,
                time.perf_counter() - start, log)
        return written
