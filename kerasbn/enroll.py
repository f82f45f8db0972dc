"""Enrols people into a gallery: the people a deployment should name, everyone else
"unknown" (kerasbn.serving.gallery says how a gallery is made and kept).

    python -m kerasbn.enroll --model=runs/r50/export --photos=people/ --out=gallery \
        --far=1e-3 --data_dir=data/mine
    python -m kerasbn.enroll --model=EXPORT --photos=more_people/ --out=gallery   # add more

--photos holds one folder per person (its name the person's): face crops like the network's
training images, or whole photos with --align (each photo's largest face, found and aligned
as kerasbn aligns). Each person's images become one template. Enrolling into an existing
gallery adds the new people and replaces the ones enrolled again, without embedding the
others; a gallery refuses a model other than the one it was made with.

The threshold is chosen at a false accept rate: --far=F with the verification pairs to
choose it on (--pairs with --image_root, --bin, --ijb, or --data_dir's holdout pairs), the
loosest threshold whose FAR there is at most F; or --threshold given. Its value, source and
the FAR it reached are stored and printed.
"""

import dataclasses
import os
import sys

import numpy as np
from absl import flags

from kerasbn.data import images, records
from kerasbn.evaluation import evaluator, verification
from kerasbn.faces import photo_alignment
from kerasbn.flags import cli
from kerasbn.serving import gallery, signatures
from kerasbn.utils.progress import Progress


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("model", None, "A SavedModel written by kerasbn.export.", **on)
    flags.DEFINE_string("photos", None, "One folder per person, named for them.", **on)
    flags.DEFINE_string("out", None, "The gallery directory (made, or added to).", **on)
    flags.DEFINE_bool("align", False, "Whole photos: each one's largest face found and "
                      "aligned (else face crops, resized as the network's dataset).", **on)
    flags.DEFINE_float("far", None, "Choose the threshold at this false accept rate on the "
                       "pairs given (--pairs, --bin, --ijb or --data_dir).", lower_bound=0,
                       upper_bound=1, **on)
    flags.DEFINE_float("threshold", None, "The threshold (cosine) to store instead.",
                       lower_bound=-1, upper_bound=1, **on)
    flags.DEFINE_string("data_dir", None, "--far: a dataset whose holdout pairs choose it.",
                        **on)
    flags.DEFINE_string("pairs", None, "--far: a pairs.txt (LFW's layout) over --image_root.",
                        **on)
    flags.DEFINE_string("image_root", None, "The photos --pairs names.", **on)
    flags.DEFINE_string("bin", None, "--far: an insightface .bin verification set.", **on)
    flags.DEFINE_string("ijb", None, "--far: an IJB release (its 1:1 template pairs).", **on)
    flags.DEFINE_integer("batch_size", 64, "Images per batch.", lower_bound=1, **on)


def check(values, rest):
    """One line naming what is wrong with the flags, or None."""
    sources = [name for name in ("data_dir", "pairs", "bin", "ijb") if values[name].value]
    missing = next((f"--{name} is required" for name in ("model", "photos", "out")
                    if not values[name].value), None)
    if missing or rest:
        return missing or f"unexpected arguments {rest}"
    if not os.path.isdir(values.photos):
        return f"--photos={values.photos} is not a directory of person folders"
    if values.far is not None and values.threshold is not None:
        return "--far chooses the threshold, --threshold gives it: one of them"
    if values.far is not None and len(sources) != 1:
        return ("--far needs one set of pairs to choose the threshold on: --data_dir, --pairs "
                "(with --image_root), --bin or --ijb")
    if values.far is None and sources:
        return f"--{sources[0]} chooses a threshold with --far; add --far=F or drop it"
    if bool(values.pairs) != bool(values.image_root):
        return "--pairs and --image_root go together"
    if values.far is None and values.threshold is None and not os.path.isfile(
            os.path.join(values.out, gallery.META)):
        return ("a new gallery needs its threshold: --far=1e-3 with --data_dir, --pairs, "
                "--bin or --ijb, or --threshold=T")
    return None


def crops_of(files, served, align):
    """([uint8 image of each usable file], [(file, why not)] of the others): with `align`
    its largest face aligned, else the file at its own size, which the export resizes as it
    resizes every photo it serves (so a face is enrolled as predict will see it)."""
    height, width = served.image_size
    crops, skipped = [], []
    settings = photo_alignment.Settings(height, width, served.channels)
    for path in files:
        if align:
            entry, faces = photo_alignment.align_photo(path, settings)
            reason = entry.get("reason")
        else:
            faces, reason = images.load(path, served.channels)
            faces = None if reason else faces[None]
        if faces is None or not len(faces):
            skipped.append((path, reason))
        else:
            crops.append(faces[0])
    return crops, skipped


def people(root):
    """[(name, image files)] of the person folders under `root`; DataError for none, or for
    a folder without an image."""
    names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    if not names:
        raise records.DataError(f"--photos={root} holds no person folders; put each "
                                "person's photos in a folder named for them")
    found = []
    for name in names:
        files = sorted(p for p, reason in images.files_under(os.path.join(root, name))
                       if reason is None)
        if not files:
            raise records.DataError(f"--photos={root}/{name} holds no image; add the person's "
                                    "photos or remove the folder")
        found.append((name, files))
    return found


def threshold_of(values, served):
    """The threshold entry the flags ask for, or None to keep the gallery's."""
    if values.threshold is not None:
        return {"value": values.threshold, "source": "given (--threshold)"}
    if values.far is None:
        return None
    request = evaluator.Request(values.data_dir, pairs=values.pairs,
                                image_root=values.image_root,
                                bins=(values.bin,) if values.bin else (), align=values.align,
                                ijb=values.ijb, batch_size=values.batch_size,
                                ijb_cache=os.path.join(values.out, "ijb_cache"))
    scores, same, what = evaluator.threshold_pairs(served, request)
    value, reached, tar = verification.threshold_at_far(scores, same, values.far)
    impostors = int(np.sum(~np.asarray(same, bool)))
    return {"value": value, "far_asked": values.far, "far": reached, "tar": tar,
            "impostor_pairs": impostors, "source": f"chosen at FAR {values.far:g} on {what}"}


def enroll(values):
    served = signatures.from_saved_model(values.model)
    prints = gallery.fingerprint(served.serve, served.image_size, served.channels)
    existing = None
    if os.path.isfile(os.path.join(values.out, gallery.META)):
        existing = gallery.read(values.out)
        gallery.check_model(existing, values.out, prints)
    found = people(values.photos)
    threshold = threshold_of(values, served)
    names, counts, templates, not_enrolled = [], [], [], []
    progress = Progress(sum(len(files) for _, files in found), "enrolling", unit="photos")
    for name, files in found:
        crops, skipped = crops_of(files, served, values.align)
        for path, why in skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        if not crops:
            not_enrolled.append(f"{name} (no usable face in its {len(files)} photos)")
        else:
            names.append(name)
            counts.append(len(crops))
            templates.append(gallery.pooled(served.serve, crops))
        progress.update(len(files))
    base = existing or gallery.Gallery((), (), np.zeros((0, len(prints)), np.float32), None,
                                       prints, os.path.abspath(values.model))
    made = base.with_people(names, counts, templates) if names else base
    if threshold is not None:
        made = dataclasses.replace(made, threshold=threshold)
    gallery.write(values.out, made)
    print(f"enrolled {len(names)} people ({sum(counts)} images) into {values.out}: "
          f"{len(made.names)} people in the gallery")
    if not_enrolled:
        print("not enrolled: " + "; ".join(not_enrolled))
    cut = made.threshold
    print(f"threshold {cut['value']:.4f}: {cut['source']}" + (
        f" (FAR reached {cut['far']:.2g} of {cut['impostor_pairs']} impostor pairs, TAR "
        f"{cut['tar']:.4f})" if "far" in cut else ""))


def main(argv):
    values, rest = cli.parse(argv, define_flags, __doc__)
    problem = check(values, rest)
    if problem:
        sys.exit(f"error: {problem}")
    cli.check_writable(values.out)
    cli.run(lambda: enroll(values), "the gallery was left as it was")


if __name__ == "__main__":
    main(sys.argv)
