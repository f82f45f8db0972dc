"""What whole photos cost: `python -m kerasbn.align`'s photos/s at two photo sizes (against
the mtcnn package's own detect_faces on the same photos, the reference), and the
SavedModel's `serve_photo` latency on a 640x480 photo with one and with six faces against
`serve_bytes` on the same faces already aligned (embedding alone), so the share of
detection and alignment is a ratio measured in the same run.

`run_gallery` measures what naming faces costs: serve_photo with a gallery of 1k, 10k and
100k templates inside (kerasbn.serving.gallery: the mirror embedded too, an exact cosine
search) against the same export's serve_photo without one; and the IJB embedding path's
images/s (each loose crop aligned by its landmarks, embedded with its mirror, cached;
kerasbn.evaluation.ijb_features) against serving the same crops already aligned.

The photos are made here: faces from a folder (the AT&T set) pasted on gray canvases. Each
measurement alternates over `repeats` rounds; the best round counts.
"""

import io
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from kerasbn.evaluation import ijb, ijb_features
from kerasbn.faces import aligner, detector, photo_alignment, template
from kerasbn.serving import gallery, signatures

# (canvas width, height) of the align measurement; faces are pasted at 1.5x their size.
SIZES = ((640, 480), (1280, 960))


def group_photo(face_paths, size, faces):
    """PNG bytes of a gray size[0] x size[1] canvas with `faces` of the face files pasted in
    a row."""
    canvas = Image.new("L", size, 128)
    step = size[0] // max(faces, 1)
    for k, path in enumerate(face_paths[:faces]):
        face = Image.open(path)
        scale = min(1.5, 0.9 * step / face.width)
        face = face.resize((int(face.width * scale), int(face.height * scale)))
        canvas.paste(face, (k * step + (step - face.width) // 2, (size[1] - face.height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


def best_of(function, repeats):
    """The fastest of `repeats` timed calls of `function`, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def run(export, faces_dir, repeats=5, photos=8):
    """Prints and returns the measurements."""
    face_paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(faces_dir)
                        for name in names if name.endswith((".pgm", ".png", ".jpg")))
    if len(face_paths) < 6:
        raise ValueError(f"{faces_dir} holds fewer than 6 face images")
    from mtcnn import MTCNN
    package = MTCNN()
    result = {}
    settings = photo_alignment.Settings()
    for size in SIZES:
        encoded = group_photo(face_paths, size, 1)
        array = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
        detector.detect(array)  # the detector's networks load once, outside the timing

        def align_photos():
            for _ in range(photos):
                faces = detector.detect(array, settings.min_face_size, settings.min_confidence)
                aligner.crops(array, np.stack([f.landmarks for f in faces]), 112, 112, 3)

        def package_photos():
            for _ in range(photos):
                package.detect_faces(array)

        package.detect_faces(array)
        seconds, reference = best_of(align_photos, repeats), best_of(package_photos, repeats)
        result[f"align_{size[0]}x{size[1]}_photos_per_sec"] = photos / seconds
        result[f"mtcnn_{size[0]}x{size[1]}_photos_per_sec"] = photos / reference
        print(f"align, {size[0]}x{size[1]} photos with one face: {photos / seconds:.1f} "
              f"photos/s, detection and alignment; the mtcnn package's detect_faces alone "
              f"{photos / reference:.1f} photos/s ({reference / seconds:.2f}x)", flush=True)
    served = tf.saved_model.load(export)
    photo, crops_bytes = served.signatures["serve_photo"], served.signatures["serve_bytes"]
    for faces in (1, 6):
        encoded = group_photo(face_paths, SIZES[0], faces)
        array = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
        found = detector.detect(array)
        crops = aligner.crops(array, np.stack([f.landmarks for f in found]), 112, 112, 3)
        crop_files = []
        for crop in crops:
            buffer = io.BytesIO()
            Image.fromarray(crop).save(buffer, "PNG")
            crop_files.append(buffer.getvalue())
        whole = lambda: photo(photo=tf.constant(encoded))
        aligned = lambda: crops_bytes(encoded=tf.constant(crop_files))
        whole(), aligned()
        t_whole, t_aligned = best_of(whole, repeats), best_of(aligned, repeats)
        result[f"serve_photo_{faces}_faces_ms"] = 1000 * t_whole
        result[f"serve_bytes_{faces}_faces_ms"] = 1000 * t_aligned
        print(f"serve_photo, 640x480 with {len(found)} face(s): {1000 * t_whole:.1f} ms; "
              f"serve_bytes on its aligned faces: {1000 * t_aligned:.1f} ms "
              f"(detection and alignment {t_whole / t_aligned:.1f}x the embedding)",
              flush=True)
    return result


GALLERY_SIZES = (1_000, 10_000, 100_000)
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


def run_gallery(export, faces_dir, repeats=5, sizes=GALLERY_SIZES, batch_size=64):
    """Prints and returns the gallery and IJB measurements (the module says which)."""
    face_paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(faces_dir)
                        for name in names if name.endswith((".pgm", ".png", ".jpg")))
    encoded = tf.constant(group_photo(face_paths, SIZES[0], 1))
    loaded, spec = signatures.load_saved_model(export)
    serve = lambda images: loaded.signatures["serving_default"](images=tf.constant(images))
    plain = lambda: loaded.signatures["serve_photo"](photo=encoded)
    plain()
    base = best_of(plain, repeats)
    result = {"serve_photo_ms": 1000 * base}
    print(f"serve_photo without a gallery: {1000 * base:.1f} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="kerasbn_gallery_") as scratch:
        for people in sizes:
            path = os.path.join(scratch, f"g{people}")
            gallery.export_with(export, _random_gallery(serve, spec, people, export), path,
                                "bench")
            named = tf.saved_model.load(path).signatures["serve_photo"]
            named(photo=encoded)
            seconds = best_of(lambda: named(photo=encoded), repeats)
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
        aligned_rate = batch_size / best_of(embed_both, repeats)
        result.update(ijb_images_per_sec=ijb_rate, aligned_images_per_sec=aligned_rate)
        print(f"IJB embedding (align by landmarks, image and mirror, cache): {ijb_rate:.1f} "
              f"images/s; the same two views of aligned crops: {aligned_rate:.1f} images/s "
              f"({aligned_rate / ijb_rate:.2f}x)", flush=True)
    return result
