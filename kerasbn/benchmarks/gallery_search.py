"""What naming faces costs: an export's serve_photo with a gallery of 1k, 10k and 100k
templates inside (kerasbn.serving.gallery: the mirror embedded too, an exact cosine search)
against the same export's serve_photo without one, on a 640x480 photo with one face; and the
IJB embedding path's images/s (each loose crop aligned by its landmarks, embedded with its
mirror, cached; kerasbn.evaluation.ijb_features) against serving the same crops already
aligned, both as ratios measured in the same run. Each measurement's best of `repeats`
rounds counts.
"""

import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from kerasbn.benchmarks import photo_pipeline
from kerasbn.evaluation import ijb, ijb_features
from kerasbn.faces import template
from kerasbn.serving import gallery, signatures

SIZES = (1_000, 10_000, 100_000)
IJB_IMAGES = 256


def _random_gallery(serve, spec, people, model):
    dim = np.asarray(serve(np.zeros((1, *spec["image_size"], spec["channels"]), np.uint8))[
        "embedding"]).shape[-1]
    templates = np.random.default_rng(0).normal(size=(people, dim)).astype(np.float32)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    return gallery.Gallery(tuple(f"person{i}" for i in range(people)), (1,) * people,
                           templates, {"value": 0.5, "source": "bench"},
                           gallery.fingerprint(serve, tuple(spec["image_size"]),
                                               spec["channels"]), model)


def _release(root, count):
    """An IJB-C-shaped release of `count` noise loose crops (one template each)."""
    rng = np.random.default_rng(1)
    os.makedirs(os.path.join(root, "loose_crop"))
    os.makedirs(os.path.join(root, "meta"))
    rows, points = [], []
    for index in range(count):
        name = f"{index}.jpg"
        Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)).save(
            os.path.join(root, "loose_crop", name))
        marks = template.template(150, 150) + rng.normal(0, 1.0, (5, 2))
        rows.append(f"{name} {index} {index}")
        points.append(" ".join([name, *(f"{v:.2f}" for v in marks.ravel()), "1.0"]))
    for name, lines in (("face_tid_mid.txt", rows), ("name_5pts_score.txt", points),
                        ("template_pair_label.txt", ["0 1 0", "1 2 1"])):
        with open(os.path.join(root, "meta", f"ijbc_{name}"), "w") as f:
            f.write("\n".join(lines) + "\n")


def run(export, faces_dir, repeats=5, sizes=SIZES, batch_size=64):
    """Prints and returns the measurements."""
    face_paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(faces_dir)
                        for name in names if name.endswith((".pgm", ".png", ".jpg")))
    encoded = tf.constant(photo_pipeline.group_photo(face_paths, photo_pipeline.SIZES[0], 1))
    loaded, spec = signatures.load_saved_model(export)
    serve = lambda images: loaded.signatures["serving_default"](images=tf.constant(images))
    plain = lambda: loaded.signatures["serve_photo"](photo=encoded)
    plain()
    base = photo_pipeline.best_of(plain, repeats)
    result = {"serve_photo_ms": 1000 * base}
    print(f"serve_photo without a gallery: {1000 * base:.1f} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="kerasbn_gallery_") as scratch:
        for people in sizes:
            path = os.path.join(scratch, f"g{people}")
            gallery.export_with(export, _random_gallery(serve, spec, people, export), path,
                                "bench")
            named = tf.saved_model.load(path).signatures["serve_photo"]
            named(photo=encoded)
            seconds = photo_pipeline.best_of(lambda: named(photo=encoded), repeats)
            result[f"gallery_{people}_ms"] = 1000 * seconds
            print(f"serve_photo naming among {people:,} templates: {1000 * seconds:.1f} ms "
                  f"({seconds / base:.2f}x without a gallery)", flush=True)
        root = os.path.join(scratch, "release")
        _release(root, IJB_IMAGES)
        meta = ijb.read(root)
        served = signatures.from_saved_model(export)
        start = time.perf_counter()
        views = ijb_features.embed(served, meta, os.path.join(scratch, "cache"), batch_size)
        ijb_rate = len(views) / (time.perf_counter() - start)
        height, width = spec["image_size"]
        crops = np.random.default_rng(2).integers(
            0, 256, (batch_size, height, width, spec["channels"]), dtype=np.uint8)
        embed_both = lambda: (serve(crops), serve(crops[:, :, ::-1]))
        embed_both()
        aligned_rate = batch_size / photo_pipeline.best_of(embed_both, repeats)
        result.update(ijb_images_per_sec=ijb_rate, aligned_images_per_sec=aligned_rate)
        print(f"IJB embedding (align by landmarks, image and mirror, cache): {ijb_rate:.1f} "
              f"images/s; the same two views of aligned crops: {aligned_rate:.1f} images/s "
              f"({aligned_rate / ijb_rate:.2f}x)", flush=True)
    return result
