"""Finds the faces in photos and writes each one aligned: its five landmarks (MTCNN, the
`mtcnn` package) carried onto insightface's ArcFace template by a similarity transform.

    python -m kerasbn.align PHOTOS --out DIR [--image_size 112 | 112,96] [--channels 3]
        [--faces largest|all] [--min_confidence 0.9] [--min_face_size 20] [--workers N]

PHOTOS is a folder tree or a list file of photo paths (any format Pillow reads, EXIF
orientation applied). Each photo's crop goes to the same place in DIR's tree as a PNG
(PHOTO.png; with --faces=all, PHOTO_0.png for the largest face, PHOTO_1.png, ...); a list
file's photos outside its folder go under DIR/_abs/ (an absolute path) and DIR/_up/ (each
`..`), so nothing is written outside DIR. Two photos that would share a crop name (a.gif and
a.webp) keep their extensions (a.gif.png, a.webp.png); align.csv names every crop. DIR may not
be the photo folder itself, no crop is ever written over a photo, and a rerun continues DIR
only with the settings it was made with (DIR/align_settings.json). DIR/
align.jsonl reports every photo as it is done (faces found, their boxes, confidences and
landmarks, which were kept, or why none was), DIR/align.csv sums it up, and DIR/
align_montage.png draws a few photos with their boxes and landmarks beside their crops.
A rerun of the same command continues where an interrupted one stopped; every file is
written whole. kerasbn.faces.template says where the landmarks go at each crop size.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import multiprocessing
import os
import sys

import numpy as np
from absl import flags
from PIL import Image

from kerasbn.analysis import charts
from kerasbn.data import images
from kerasbn.faces import detector_defaults, photo_alignment, photos
from kerasbn.flags import cli
from kerasbn.utils import atomic, console, errors
from kerasbn.utils.progress import Progress

REPORT = "align.jsonl"
SUMMARY = "align.csv"
MONTAGE = "align_montage.png"
# The settings a --out's crops were made with, so a rerun continues only the same alignment.
SETTINGS = "align_settings.json"
MONTAGE_PHOTOS = 6
# Where a list file's photos outside its folder go inside --out.
ABSOLUTE, UP = "_abs", "_up"
# The flag of each alignment setting, to name it in a refusal.
FLAG_OF = {"height": "image_size", "width": "image_size", "keep": "faces"}
# The crop sizes taken, in pixels, each side.
SIDES = (16, 1024)


def safe_name(name):
    """`name` (a photo's name in the listing) as a path that stays inside --out: an absolute
    path's root becomes `_abs/`, each `..` becomes `_up` (a list file may name photos
    anywhere)."""
    parts = []
    if os.path.isabs(name):
        parts.append(ABSOLUTE)
    for part in name.split("/"):
        if part in ("", "."):
            continue
        parts.append(UP if part == ".." else part)
    return "/".join(parts)


def crop_stems(names):
    """{photo name: the path, inside --out and without suffix, its crops are named by}: the
    name without its extension, or with it where two photos would share one (`anim.gif` and
    `anim.webp` give `anim.gif` and `anim.webp`), then `~N` until it is unique; the names
    of align's own files are never taken."""
    shared = collections.Counter(os.path.splitext(safe_name(n))[0] for n in names)
    taken = {os.path.splitext(MONTAGE)[0]}
    stems = {}
    for name in sorted(names):
        safe = safe_name(name)
        stem = os.path.splitext(safe)[0]
        if shared[stem] > 1 or stem in taken:
            stem = safe
        base, count = stem, 0
        while stem in taken:
            count += 1
            stem = f"{base}~{count}"
        taken.add(stem)
        stems[name] = stem
    return stems


def crop_names(stem, kept, keep):
    """The crops' file names (relative to --out) of a photo of crop stem `stem`."""
    return [f"{stem}.png"] if keep == "largest" else [f"{stem}_{i}.png" for i in kept]


def check_settings(out, settings):
    """Raises DataError when `out` holds crops made with other settings; records the
    settings on a first run."""
    path = os.path.join(out, SETTINGS)
    wanted = dataclasses.asdict(settings)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
        if before != wanted:
            changed = ", ".join(f"--{FLAG_OF.get(k, k)} {before.get(k)} -> {wanted[k]}"
                                for k in wanted if before.get(k) != wanted[k])
            raise errors.DataError(f"--out={out} holds crops aligned with other settings "
                                   f"({changed}); give a new --out, or the settings it was "
                                   "made with to continue it")
    else:
        os.makedirs(out, exist_ok=True)
        atomic.write_json(path, wanted)


def read_report(out):
    """{photo name: entry} of the photos an earlier run of this command finished in `out`
    (a torn last line, from a killed run, is dropped)."""
    path = os.path.join(out, REPORT)
    done = {}
    if not os.path.exists(path):
        return done
    with open(path, "rb") as f:
        for line in f.read().split(b"\n"):
            try:
                entry = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if all(os.path.isfile(os.path.join(out, crop)) for crop in entry["crops"]):
                done[entry["photo"]] = entry
    return done


def _worker_start():
    console.import_tensorflow()


def _aligned(job):
    path, settings = job
    return photo_alignment.align_photo(path, settings)


def results(jobs, workers):
    """(entry, crops) of each (path, settings) job, in order, over `workers` processes
    (spawned: TensorFlow must not be forked)."""
    if workers == 1:
        yield from map(_aligned, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_worker_start) as pool:
        yield from pool.map(_aligned, jobs, chunksize=4)


def _refuse_overwrite(name, target, sources):
    if os.path.realpath(target) in sources:
        raise errors.DataError(f"the crop of {name} would be written over the photo {target}; "
                               "give an --out outside the photos")


def align_all(source, out, settings, workers=1):
    """Aligns every photo of `source` into `out`; returns (the report entries, in order,
    {photo name: its path})."""
    if os.path.isdir(source) and os.path.realpath(out) == os.path.realpath(source):
        raise errors.DataError(f"--out={out} is the photo folder itself: crops would be written "
                               "among (and over) the photos; give another directory")
    listed = photos.listing(source, exclude=out)
    stems = crop_stems([name for name, _ in listed])
    sources = {os.path.realpath(path) for _, path in listed}
    for name, _ in listed:
        _refuse_overwrite(name, os.path.join(out, crop_names(stems[name], [0], settings.keep)[0]),
                          sources)
    check_settings(out, settings)
    done = read_report(out)
    todo = [(name, path) for name, path in listed if name not in done]
    if done:
        print(f"continuing: {len(done)} of {len(listed)} photos were aligned before")
    progress = Progress(len(todo), "align", unit="photos")
    with open(os.path.join(out, REPORT), "a", encoding="utf-8") as report:
        jobs = ((path, settings) for _, path in todo)
        for (name, _), (entry, crops) in zip(todo, results(jobs, workers)):
            names = crop_names(stems[name], entry["kept"], settings.keep)
            for crop_name, crop in zip(names, crops):
                target = os.path.join(out, crop_name)
                _refuse_overwrite(name, target, sources)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                atomic.write_with(target, lambda f, c=crop: Image.fromarray(
                    c[..., 0] if c.shape[2] == 1 else c).save(f, "PNG"))
            done[name] = {"photo": name, "crops": names[:len(crops)], **entry}
            report.write(json.dumps(done[name]) + "\n")
            report.flush()
            progress.update(1)
    entries = [done[name] for name, _ in listed]
    write_summary(os.path.join(out, SUMMARY), entries)
    return entries, dict(listed)


def write_summary(path, entries):
    """align.csv: one row per photo."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["photo", "faces_found", "kept", "crops", "confidence", "box",
                     "landmarks", "reason"])
    for entry in entries:
        first = entry["faces"][entry["kept"][0]] if entry["kept"] else {}
        writer.writerow([entry["photo"], entry["faces_found"], len(entry["kept"]),
                         " ".join(entry["crops"]), first.get("confidence", ""),
                         " ".join(map(str, first.get("box", []))),
                         " ".join(f"{x} {y}" for x, y in first.get("landmarks", [])),
                         entry.get("reason", "")])
    atomic.write_text(path, buffer.getvalue())


def draw_montage(source_paths, out, entries, path):
    """A few photos with their faces' boxes and landmarks drawn, each beside its crops."""
    shown = [(entry, source_paths[entry["photo"]]) for entry in entries if entry["kept"]]
    shown = shown[:MONTAGE_PHOTOS]
    if not shown:
        return None
    plt = charts.pyplot()
    width = 1 + max(len(entry["kept"]) for entry, _ in shown)
    fig, axes = plt.subplots(len(shown), width, figsize=(2.2 * width, 2.2 * len(shown)),
                             squeeze=False)
    for row, (entry, photo_path) in zip(axes, shown):
        photo, _ = images.load(photo_path, 3)
        row[0].imshow(photo)
        for face in entry["faces"]:
            x, y, w, h = face["box"]
            row[0].add_patch(plt.Rectangle((x, y), w, h, fill=False, color="lime"))
            row[0].scatter(*np.array(face["landmarks"]).T, s=6, color="red")
        # A name that is not UTF-8 is drawn with its odd bytes as U+FFFD.
        title = entry["photo"].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        row[0].set_title(title[-24:], fontsize=7)
        for axis, crop in zip(row[1:], entry["crops"]):
            crop_image = np.asarray(Image.open(os.path.join(out, crop)))
            axis.imshow(crop_image, cmap="gray" if crop_image.ndim == 2 else None)
        for axis in row:
            axis.axis("off")
    charts.save_figure(fig, path)
    return path


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("out", None, "The directory for the aligned crops and the report.",
                        **on)
    cli.define_image_size(values, "112", "The crop's size: 112 for the field's networks, "
                          "112,96 for SphereFace's and CosFace's, 50 for the study's")
    flags.DEFINE_enum("channels", "3", ["1", "3"], "1 gray (Pillow's luma) or 3 RGB.", **on)
    flags.DEFINE_enum("faces", "largest", list(photo_alignment.KEEP), "largest: one crop "
                      "per photo, its largest face; all: every face found.", **on)
    flags.DEFINE_float("min_confidence", detector_defaults.MIN_CONFIDENCE, "Faces the "
                       "detector is less sure of are not kept.", lower_bound=0,
                       upper_bound=1, **on)
    flags.DEFINE_integer("min_face_size", detector_defaults.MIN_FACE_SIZE, "The smallest "
                         "face, in pixels, the detector looks for.", lower_bound=12, **on)
    flags.DEFINE_integer("workers", 1, "Processes aligning photos.", lower_bound=1,
                         upper_bound=64, **on)


def main(argv):
    values, args = cli.parse(argv, define_flags, __doc__)
    if len(args) != 1:
        sys.exit("error: give one PHOTOS folder or list file")
    if not values.out:
        sys.exit("error: --out is required")
    if os.path.exists(values.out) and not os.path.isdir(values.out):
        sys.exit(f"error: --out={values.out} is a file; give a directory")
    height, width = values.image_size
    if not SIDES[0] <= min(height, width) <= max(height, width) <= SIDES[1]:
        sys.exit(f"error: --image_size={height},{width}: each side must be {SIDES[0]} to "
                 f"{SIDES[1]} pixels")
    settings = photo_alignment.Settings(height, width, int(values.channels), values.faces,
                                        values.min_confidence, values.min_face_size)
    cli.check_writable(values.out)
    console.import_tensorflow()
    entries, sources = cli.run(
        lambda: align_all(args[0], values.out, settings, values.workers),
        f"the photos aligned so far are kept in {values.out}; rerun the same command to "
        "continue")
    kept = sum(len(entry["kept"]) for entry in entries)
    none = [entry for entry in entries if not entry["kept"]]
    print(f"aligned {kept} faces from {len(entries) - len(none)} of {len(entries)} photos "
          f"into {values.out} ({settings.height}x{settings.width}, {settings.channels} "
          f"channel{'s' if settings.channels > 1 else ''}); report: "
          f"{os.path.join(values.out, SUMMARY)}")
    for line in console.at_most([f"  no crop for {e['photo']}: {e['reason']}" for e in none],
                                10, f"in {os.path.join(values.out, SUMMARY)}"):
        print(line)
    montage = draw_montage(sources, values.out, entries,
                           os.path.join(values.out, MONTAGE))
    if montage:
        print(f"montage: {montage}")


if __name__ == "__main__":
    main(sys.argv)
