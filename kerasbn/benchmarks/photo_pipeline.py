"""What whole photos cost: `python -m kerasbn.align`'s photos/s at two photo sizes (against
the mtcnn package's own detect_faces on the same photos, the reference), and the
SavedModel's `serve_photo` latency on a 640x480 photo with one and with six faces against
`serve_bytes` on the same faces already aligned (embedding alone), so the share of
detection and alignment is a ratio measured in the same run.

The photos are made here: faces from a folder (the AT&T set) pasted on gray canvases. Each
measurement alternates over `repeats` rounds; the best round counts.
"""

import io
import os
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from kerasbn.faces import aligner, detector, photo_alignment

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
