"""A gallery: the people a deployment knows, one template each, and the threshold under
which a face is nobody it knows ("unknown"), as the field deploys a face network.

A person's images are embedded with their mirror images, the two raw embeddings summed (as
the IJB protocols embed, kerasbn.evaluation.ijb_features), and pooled into one template as
IJB pools a template whose media are single photos: the sum, L2-normalised. A face is then
the enrolled person of the highest cosine if it reaches the threshold, else unknown.

On disk a gallery is a directory: templates.npy (float32 [P, D], unit rows) and
gallery.json (each person's name and image count, the threshold with where it came from and
the false accept rate it reached, and the model's fingerprint: its embedding of a fixed
noise image, so a gallery refuses a model it was not enrolled with). templates.npy is
written first and gallery.json last, each whole; a gallery whose two disagree was cut off
mid-write and is refused until enrolled again.

`export_with` writes an export whose `serve_photo` also names every face it finds
(`identity`, `identity_score`) by an exact cosine search inside the graph.
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from kerasbn.data import records
from kerasbn.evaluation import ijb_features
from kerasbn.runs import export_layout
from kerasbn.serving import exporter, signatures
from kerasbn.utils import atomic

TEMPLATES, META = "templates.npy", "gallery.json"
UNKNOWN = "unknown"
# How near a model's fingerprint must lie to the gallery's to be the model it was made by
# (the distance of unit vectors whose cosine is 0.9999; a model whose embedding of the noise
# image is degenerate, all zero, still matches itself).
SAME_MODEL = 0.0142
# The gallery an export serves, as its marker records it.
MARKER_KEY = "gallery"


@dataclasses.dataclass(frozen=True)
class Gallery:
    """Enrolled `names` (in template order), each one's image `counts`, unit `templates`
    [P, D], the `threshold` ({value, source, far, ...} or None) and the model `fingerprint`."""
    names: tuple
    counts: tuple
    templates: np.ndarray
    threshold: dict | None
    fingerprint: tuple
    model: str

    def with_people(self, names, counts, templates):
        """This gallery with `names` added, or replaced where enrolled already."""
        rows = {name: i for i, name in enumerate(self.names)}
        all_names, all_counts = list(self.names), list(self.counts)
        stacked = [t for t in self.templates]
        for name, count, template in zip(names, counts, templates):
            if name in rows:
                all_counts[rows[name]], stacked[rows[name]] = count, template
            else:
                all_names.append(name)
                all_counts.append(count)
                stacked.append(template)
        return dataclasses.replace(self, names=tuple(all_names), counts=tuple(all_counts),
                                   templates=np.stack(stacked).astype(np.float32))


def pooled(serve, crops):
    """One person's template from their uint8 images (a list; each any size the serving
    function takes, batched by size): each embedded with its mirror, the raw embeddings
    summed, then L2-normalised."""
    by_shape = {}
    for crop in crops:
        by_shape.setdefault(crop.shape, []).append(crop)
    total = 0.0
    for same in by_shape.values():
        batch = np.stack(same)
        total = total + (ijb_features.raw_embeddings(serve, batch)
                         + ijb_features.raw_embeddings(serve, batch[:, :, ::-1])).sum(axis=0)
    return (total / max(np.linalg.norm(total), 1e-12)).astype(np.float32)


def fingerprint(serve, image_size, channels):
    """The model's unit embedding of a fixed noise image: what a gallery recognises it by."""
    noise = np.random.default_rng(20261207).integers(0, 256, (1, *image_size, channels))
    return tuple(float(v) for v in np.asarray(serve(noise.astype(np.uint8))["embedding"])[0])


def check_model(gallery, path, prints):
    """DataError unless `prints` (a model's fingerprint) is the gallery's model's."""
    if len(prints) != len(gallery.fingerprint) or not float(np.linalg.norm(
            np.subtract(prints, gallery.fingerprint))) <= SAME_MODEL:
        raise records.DataError(f"--gallery={path} was enrolled with {gallery.model}, another "
                                "model than this one; enroll the people again with this model "
                                "(python -m kerasbn.enroll) or use that one")


def read(path):
    """The `Gallery` at `path`; DataError naming what is wrong."""
    meta_path, templates_path = os.path.join(path, META), os.path.join(path, TEMPLATES)
    if not os.path.isfile(meta_path):
        raise records.DataError(f"--gallery={path} holds no {META}; make one with python -m "
                                "kerasbn.enroll")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        templates = np.load(templates_path)
        people = meta["people"]
        if templates.shape[0] != len(people):
            raise ValueError(f"{templates.shape[0]} templates for {len(people)} people: its "
                             "writing was cut off")
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise records.DataError(f"--gallery={path} is unreadable ({e}); enroll the people "
                                "again") from None
    return Gallery(tuple(p["name"] for p in people), tuple(p["images"] for p in people),
                   templates.astype(np.float32), meta.get("threshold"),
                   tuple(meta["fingerprint"]), meta.get("model", "?"))


def write(path, gallery):
    """Writes `gallery` to directory `path` (templates first, then the metadata)."""
    os.makedirs(path, exist_ok=True)
    atomic.write_with(os.path.join(path, TEMPLATES),
                      lambda f: np.save(f, gallery.templates.astype(np.float32)))
    atomic.write_json(os.path.join(path, META), {
        "written_by": "kerasbn", "model": gallery.model, "threshold": gallery.threshold,
        "people": [{"name": n, "images": c} for n, c in zip(gallery.names, gallery.counts)],
        "fingerprint": list(gallery.fingerprint)})


def search(gallery, unit, top_k=1):
    """(indices [N, k], cosines [N, k]) of the `top_k` enrolled people nearest each unit
    embedding [N, D], best first."""
    scores = np.asarray(unit, np.float32) @ gallery.templates.T
    k = min(top_k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return best, np.take_along_axis(scores, best, axis=1)


def verdict(gallery, index, score):
    """The enrolled name of template `index` if `score` reaches the threshold, else unknown
    (every face is unknown to a gallery without a threshold)."""
    cut = (gallery.threshold or {}).get("value")
    return gallery.names[index] if cut is not None and score >= cut else UNKNOWN


class _Served(tf.Module):
    """An export with a gallery: its signatures, serve_photo naming the faces it finds."""

    def __init__(self, loaded, gallery):
        super().__init__()
        self.loaded = loaded
        # Variables, not constants: a large gallery's templates stay out of the graph.
        self.templates = tf.Variable(gallery.templates.T, trainable=False, name="templates")
        self.names = tf.Variable(list(gallery.names) + [UNKNOWN], trainable=False,
                                 name="names")
        self.threshold = tf.Variable(gallery.threshold["value"], dtype=tf.float32,
                                     trainable=False, name="threshold")

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="photo")])
    def serve_photo(self, photo):
        out = self.loaded.signatures["serve_photo"](photo=photo)
        raw = lambda served: served["embedding"] * served["embedding_norm"][:, None]
        # serve_photo embedded each face already; only the mirror images are embedded here.
        mirrored = self.loaded.signatures["serving_default"](
            images=tf.reverse(out["crops"], [2]))
        total = raw(out) + raw(mirrored)
        scores = tf.math.l2_normalize(total, axis=-1, epsilon=1e-24) @ self.templates
        best = tf.argmax(scores, axis=1, output_type=tf.int32)
        score = tf.reduce_max(scores, axis=1)
        unknown = tf.fill(tf.shape(best), tf.shape(self.names)[0] - 1)
        named = tf.where(score >= self.threshold, best, unknown)
        return {**out, "identity": tf.gather(self.names, named), "identity_score": score}


def export_with(source, gallery, out, where):
    """Writes to `out` the export at `source` with `gallery` (read from `where`) inside: every
    signature as it was, serve_photo also returning each face's `identity` (enrolled name or
    unknown) and `identity_score` (its best cosine). Returns the user's files that stayed in
    `out`."""
    if gallery.threshold is None or not gallery.names:
        raise records.DataError(f"--gallery={where} holds no threshold or no people; enroll "
                                "with --far (or --threshold) first")
    loaded, spec = signatures.load_saved_model(source)
    serve = lambda images: loaded.signatures["serving_default"](images=tf.constant(images))
    check_model(gallery, where, fingerprint(serve, tuple(spec["image_size"]), spec["channels"]))
    if "serve_photo" not in loaded.signatures:
        raise records.DataError(f"{source} has no serve_photo (an older export); export the "
                                "run again with python -m kerasbn.export")
    module = _Served(loaded, gallery)
    functions = {name: fn for name, fn in loaded.signatures.items() if name != "serve_photo"}
    functions["serve_photo"] = module.serve_photo

    def write(tmp):
        tf.saved_model.save(module, tmp, signatures=functions)
        atomic.write_json(os.path.join(tmp, export_layout.MARKER), {
            **spec, MARKER_KEY: {"people": len(gallery.names),
                                 "threshold": gallery.threshold, "model": gallery.model}})
    return exporter.write_export(out, write)
