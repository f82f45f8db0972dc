"""Runs an exported network on face photos: names each, compares two, or embeds a folder.

    python -m kerasbn.predict --model=runs/bn/export photo.jpg other.png ...
    python -m kerasbn.predict --model=runs/bn/export --compare a.jpg b.jpg
    python -m kerasbn.predict --model=runs/bn/export --embed=photos/ --out=emb.npy
    python -m kerasbn.predict --model=runs/bn/export --gallery=gallery --align photo.jpg ...

Photos may be any format Pillow reads and any size: the SavedModel converts and resizes them
as its dataset was made. A file that is not a usable image is named and skipped; the rest
are still predicted. --compare says "same" when the cosine similarity reaches the threshold
chosen on the dataset's holdout pairs, which travels inside the export. --embed writes the
L2-normalised embeddings (float32 [N, D]) and, beside them, OUT.txt with one file per row.

--align takes whole photos and runs the export's own serve_photo on each: the faces are found
(MTCNN) and aligned to the size the network takes inside the export, exactly as it serves
them, and each face gets its own line (its box and detection confidence,
then its identities); --compare and --embed take the largest face of each photo and say so.

--gallery names each face (each photo, without --align) among the people enrolled by
kerasbn.enroll: the enrolled name and its cosine, or `unknown` with the best candidate and
the gallery's threshold; --top_k candidates each; --out=FILE.jsonl also writes one JSON
line per face for scripts.
"""

import io
import json
import os
import sys

import numpy as np
import tensorflow as tf
from absl import flags
from PIL import Image

from kerasbn.data import images
from kerasbn.faces import detector, photo_alignment
from kerasbn.flags import cli
from kerasbn.runs import export_layout
from kerasbn.runs.run_dir import RunDir
from kerasbn.serving import exporter, gallery, signatures
from kerasbn.utils import atomic
from kerasbn.utils.progress import Progress

BATCH = 64


def load_model(path):
    """(the loaded SavedModel, its input spec, threshold or None) of an export (or of a run
    dir's export/). Callers keep the SavedModel, not only its signatures, whose variables it
    holds."""
    if not exporter.is_export(path) and exporter.is_export(RunDir(path).export):
        path = RunDir(path).export
    loaded, spec = signatures.load_saved_model(path)
    threshold = float(loaded.signatures["metadata"]()["threshold"])
    return loaded, spec, None if np.isnan(threshold) else threshold


def read_photos(paths, channels):
    """([(path, uint8 array at its own size)], [(path, reason)]) for the usable files."""
    good, bad = [], []
    for path in paths:
        array, reason = images.load(path, channels)
        (bad.append((path, reason)) if reason else good.append((path, array)))
    return good, bad


def aligned_faces(loaded, paths, every, progress=None):
    """([(label, {output: value})], [(path, reason)]) of the photos at `paths`, each read as
    Pillow reads it and run through the export's own serve_photo (found, aligned and served
    in its graph, as a server would): every face of each (`every`), labelled by photo, box
    and detection confidence, or its largest, labelled by the photo."""
    serve_photo = loaded.signatures["serve_photo"]
    faces, bad = [], []
    for path in paths:
        photo, reason = images.load(path, 3)
        reason = reason or detector.too_large(photo) or detector.too_small(photo)
        if reason:
            bad.append((path, reason))
            if progress:
                progress.update(1)
            continue
        encoded = io.BytesIO()
        Image.fromarray(photo).save(encoded, "PNG")
        out = {key: value.numpy() for key, value in
               serve_photo(photo=tf.constant(encoded.getvalue())).items()}
        if not len(out["boxes"]):
            bad.append((path, photo_alignment.NO_FACE))
        for index in range(len(out["boxes"]) if every else min(1, len(out["boxes"]))):
            box = ",".join(f"{v:.0f}" for v in out["boxes"][index])
            faces.append((f"{path} face {index} at {box} ({out['confidence'][index]:.3f})"
                          if every else path, {key: value[index] for key, value in out.items()}))
        if progress:
            progress.update(1)
    return faces, bad


def run(signature, photos, progress=None):
    """{output: array in `photos` order} of the signature on (path, array) photos, batched
    by size (any size is taken, but a batch is one size)."""
    by_shape = {}
    for index, (_, array) in enumerate(photos):
        by_shape.setdefault(array.shape, []).append(index)
    results = {}
    for indices in by_shape.values():
        for start in range(0, len(indices), BATCH):
            chunk = indices[start:start + BATCH]
            out = signature(images=tf.constant(np.stack([photos[i][1] for i in chunk])))
            for key, value in out.items():
                results.setdefault(key, [None] * len(photos))
                for i, row in zip(chunk, value.numpy()):
                    results[key][i] = row
            if progress:
                progress.update(len(chunk))
    return {key: np.stack(rows) for key, rows in results.items()}


def name_lines(photos, outputs, top_k):
    """One line per photo: its top-k identities with their probabilities."""
    lines = []
    for i, (path, _) in enumerate(photos):
        labels = outputs["labels"][i][:top_k]
        best = "  ".join(f"{outputs['names'][i][j].decode('utf-8')} "
                         f"{outputs['probabilities'][i][label]:.3f}"
                         for j, label in enumerate(labels))
        lines.append(f"{path}: {best}")
    return lines


def compare_line(a, b, similarity, threshold, source=None):
    """The verdict of a pair at the stored threshold, and where the threshold came from."""
    if threshold is None:
        return (f"{a} {b}: cosine {similarity:.4f} (the export holds no threshold: "
                f"{source or 'its dataset had no holdout pairs'})")
    verdict = "same person" if similarity >= threshold else "different people"
    return (f"{a} {b}: cosine {similarity:.4f} -> {verdict} (threshold {threshold:.4f}"
            + (f", {source}" if source else "") + ")")


def image_files(root):
    """Image files under `root`, recursively, sorted."""
    return sorted(path for path, reason in images.files_under(root) if reason is None)


def list_file(out):
    """The text file beside --embed's FILE.npy naming the image of each row: FILE.txt."""
    return out[:-len(".npy")] + ".txt"


def define_flags(values):
    on = {"flag_values": values}
    flags.DEFINE_string("model", None, "A SavedModel written by kerasbn.export (or a run "
                        "dir, for its export/).", **on)
    flags.DEFINE_bool("compare", False, "Compare the two photos given: cosine similarity and "
                      "same/different at the export's threshold.", **on)
    flags.DEFINE_string("embed", None, "Embed every image under this folder (--out "
                        "required).", **on)
    flags.DEFINE_string("out", None, "With --embed: the FILE.npy to write (and FILE.txt, "
                        "the image of each row).", **on)
    flags.DEFINE_bool("align", False, "Whole photos: find the faces (MTCNN), align each to "
                      "the network's size, and name every face (--compare, --embed: the "
                      "largest of each photo).", **on)
    flags.DEFINE_integer("top_k", None, "Identities printed per photo (default: 5 classes; "
                         "with --gallery, the best enrolled person).", lower_bound=1, **on)
    flags.DEFINE_string("gallery", None, "A gallery made by kerasbn.enroll: name each face "
                        "among its people, or unknown.", **on)


def check(values, files):
    """One line naming what is wrong with the command, or None."""
    if not values.model:
        return "--model is required: a SavedModel written by kerasbn.export"
    if values.top_k and not values.gallery and values.top_k > signatures.TOP_K:
        return f"--top_k goes up to {signatures.TOP_K} classes"
    if values.gallery:
        if values.embed or values.compare or not files:
            return "--gallery names the photos given: no --embed or --compare"
        if values.out and not values.out.endswith(".jsonl"):
            return "--out with --gallery is the FILE.jsonl of one line per face"
        return None
    if values.embed:
        if files or values.compare:
            return "--embed takes a folder and no photo arguments or --compare"
        if not values.out or not values.out.endswith(".npy"):
            return "--embed needs --out=FILE.npy for the embeddings (FILE.txt gets the paths)"
        parent = os.path.dirname(os.path.abspath(values.out))
        if not os.path.isdir(parent):
            return f"--out={values.out}: the directory {parent} does not exist; create it first"
        if os.path.isdir(values.out) or os.path.isdir(list_file(values.out)):
            return f"--out={values.out}: it or {list_file(values.out)} is a directory"
        if not os.path.isdir(values.embed):
            return f"--embed={values.embed} is not a directory"
    elif values.out:
        return "--out is the file --embed writes; add --embed=DIR or drop --out"
    elif values.compare and len(files) != 2:
        return f"--compare takes exactly two photos, got {len(files)}"
    elif not files:
        return "give one or more photos to name (or --compare a b, or --embed DIR)"
    return None


def main(argv):
    values, files = cli.parse(argv, define_flags, __doc__)
    problem = check(values, files)
    if problem:
        sys.exit(f"error: {problem}")
    if values.out:
        cli.check_writable(values.out)
    cli.run(lambda: predict(values, files),
            "nothing was written (--embed writes its files whole, at the end)")


def identify(values, model, spec, paths):
    """The --gallery lines: each face (or photo) named among the gallery's people."""
    people = gallery.read(values.gallery)
    serve = lambda images: model.signatures["serving_default"](images=tf.constant(images))
    gallery.check_model(people, values.gallery, gallery.fingerprint(
        serve, tuple(spec["image_size"]), spec["channels"]))
    if values.align:
        faces, bad = aligned_faces(model, paths, True)
        crops = [(label, row["crops"]) for label, row in faces]
    else:
        photos, bad = read_photos(paths, spec["channels"])
        crops = [(path, array) for path, array in photos]
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    records_out, cut = [], (people.threshold or {}).get("value")
    for label, crop in crops:
        # A face is searched as a template of one image, pooled as the enrolled ones were.
        unit = gallery.pooled(serve, [crop])[None]
        best, scores = gallery.search(people, unit, values.top_k or 1)
        name = gallery.verdict(people, best[0][0], scores[0][0])
        candidates = [{"name": people.names[i], "score": float(v)}
                      for i, v in zip(best[0], scores[0])]
        shown = "  ".join(f"{c['name']} {c['score']:.3f}" for c in candidates)
        print(f"{label}: {name} {scores[0][0]:.3f}" + (f"  ({shown})" if len(candidates) > 1
                                                      else "")
              if name != gallery.UNKNOWN else
              f"{label}: unknown (best {shown}; threshold {cut})")
        records_out.append({"face": label, "identity": name, "score": float(scores[0][0]),
                            "candidates": candidates, "threshold": cut})
    if values.out:
        atomic.write_text(values.out, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                              for r in records_out))
        print(f"wrote {values.out} ({len(records_out)} faces)")
    if not crops:
        sys.exit("error: no usable face among the files given")


def predict(values, files):
    """What the command does once its flags are checked."""
    model, spec, threshold = load_model(values.model)
    if values.gallery:
        return identify(values, model, spec, files)
    paths = image_files(values.embed) if values.embed else files
    if values.embed:
        print(f"embedding {len(paths)} images under {values.embed}"
              + (" (the largest face of each)" if values.align else ""))
    if values.align:
        if "serve_photo" not in model.signatures:
            sys.exit(f"error: {values.model} has no serve_photo (it was exported by an older "
                     "kerasbn); export the run again with python -m kerasbn.export")
        photos, bad = aligned_faces(model, paths, not (values.compare or values.embed),
                                    Progress(len(paths), "embed", unit="photos")
                                    if values.embed else None)
        served = lambda name: {key: np.stack([row[key] for _, row in photos])
                               for key in photos[0][1]} if photos else {}
    else:
        photos, bad = read_photos(paths, spec["channels"])
        served = lambda name: run(model.signatures[name], photos,
                                  Progress(len(photos), "embed") if values.embed else None)
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not photos:
        sys.exit("error: no usable image among the files given")
    if values.compare:
        if bad:
            sys.exit("error: --compare needs both photos")
        embedding = served("embed")["embedding"]
        print(compare_line(files[0], files[1], float(embedding[0] @ embedding[1]), threshold,
                           spec.get(export_layout.THRESHOLD_SOURCE))
              + (" (the largest face of each)" if values.align else ""))
    elif values.embed:
        embedding = served("embed")["embedding"]
        atomic.write_with(values.out, lambda f: np.save(f, embedding.astype(np.float32)))
        # The names' own bytes, so a name that is not UTF-8 is listed as it is on disk.
        atomic.write_with(list_file(values.out), lambda f: f.write(b"".join(
            os.fsencode(os.path.relpath(p, values.embed)) + b"\n" for p, _ in photos)))
        print(f"wrote {values.out} ({embedding.shape[0]} x {embedding.shape[1]}) and "
              f"{list_file(values.out)}")
    elif not spec["classes"]:
        sys.exit(f"error: {values.model} has no classifier (an imported embedding network); "
                 "compare two photos with --compare or embed a folder with --embed")
    else:
        print("\n".join(name_lines(photos, served("serving_default"), values.top_k or 5)))


if __name__ == "__main__":
    main(sys.argv)
