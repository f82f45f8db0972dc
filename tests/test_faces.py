"""Detection and alignment of faces in whole photos, against the libraries of the field:
scikit-image's similarity transform, OpenCV's warp (insightface's norm_crop uses both) and
the mtcnn package's own detect_faces."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data, transform

from kerasbn.faces import aligner, detector, photo_alignment, similarity, template


def test_the_template_at_each_size_follows_the_documented_rule():
    np.testing.assert_array_equal(template.template(112, 112), template.ARCFACE_112)
    np.testing.assert_allclose(template.template(128, 128),
                               template.ARCFACE_112 + [8.0, 0.0])
    np.testing.assert_allclose(template.template(112, 96), template.ARCFACE_112 - [8.0, 0.0])
    np.testing.assert_allclose(template.template(50, 50), template.ARCFACE_112 * 50 / 112)
    np.testing.assert_allclose(template.template(256, 256),
                               template.ARCFACE_112 * 2 + [16.0, 0.0])


@pytest.mark.parametrize("seed", range(5))
def test_the_similarity_is_scikit_images(seed):
    rng = np.random.default_rng(seed)
    angle, scale = rng.uniform(-1, 1), rng.uniform(0.3, 3)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = template.ARCFACE_112 @ rotation.T * scale + rng.uniform(-50, 300, 2)
    source += rng.normal(0, 2, source.shape)  # landmarks are never exact
    reference = transform.SimilarityTransform.from_estimate(source, template.ARCFACE_112)
    np.testing.assert_allclose(similarity.estimate(source, template.ARCFACE_112),
                               reference.params[:2], atol=1e-4)


def test_the_crop_is_scikit_images_warp_and_opencvs_warp_affine():
    photo = data.astronaut()
    landmarks = np.array([[203.5, 100.1], [245.4, 102.2], [224.2, 126.4], [201.8, 138.6],
                          [244.4, 140.4]])
    for height, width in ((112, 112), (112, 96), (50, 50)):
        matrix = aligner.matrices([landmarks], height, width)[0].numpy()
        crop = aligner.crops(photo, landmarks[None], height, width, 3)[0].astype(float)
        # scikit-image's bilinear warp in floating point: equal after rounding.
        exact = transform.warp(photo, transform.AffineTransform(
            matrix=np.vstack([matrix, [0, 0, 1]])).inverse, output_shape=(height, width),
            order=1, preserve_range=True, cval=0)
        assert np.abs(crop - np.round(exact)).max() <= 1
        # OpenCV 4.x (the test extra's) places each pixel to 1/32 of a pixel in fixed point,
        # which moves a sharp edge by up to 255/64 gray levels; on average it agrees.
        difference = np.abs(crop - cv2.warpAffine(photo, matrix, (width, height),
                                                  borderValue=0.0))
        assert difference.mean() <= 0.25 and difference.max() <= 5, (difference.mean(),
                                                                     difference.max())


@pytest.mark.slow
def test_landmarks_are_the_mtcnn_packages_own():
    from mtcnn import MTCNN
    photo = data.astronaut()
    [face] = detector.detect(photo)
    [reference] = MTCNN().detect_faces(photo)
    points = [reference["keypoints"][name] for name in template.LANDMARKS]
    # The package rounds its JSON output to whole pixels.
    np.testing.assert_allclose(face.landmarks, points, atol=1.0)
    assert face.confidence == pytest.approx(reference["confidence"], abs=1e-6)


def composite(att_faces, placements, size=(640, 480)):
    """AT&T faces of people 1, 2, ... pasted at (x, y, angle in degrees, scale) on gray."""
    canvas = Image.new("L", size, 128)
    for person, (x, y, angle, scale) in enumerate(placements, start=1):
        face = Image.open(os.path.join(att_faces, f"s{person}", "1.pgm"))
        face = face.resize((int(92 * scale), int(112 * scale)), Image.BILINEAR)
        canvas.paste(face.rotate(angle, Image.BILINEAR, expand=True, fillcolor=128), (x, y))
    return np.asarray(canvas)[..., None]


PLACEMENTS = [(40, 60, 0, 1.5), (260, 140, 20, 1.3), (450, 40, -15, 1.2)]


def test_every_pasted_face_is_found_and_its_crop_undoes_the_rotation(att_faces):
    photo = composite(att_faces, PLACEMENTS)
    faces = detector.detect(photo)
    assert len(faces) == 3
    centres = sorted((face.box[0] + face.box[2] / 2) for face in faces)
    assert [c < 200 for c in centres] == [True, False, False] and centres[2] > 450
    crops = aligner.crops(photo, np.stack([f.landmarks for f in faces]), 112, 112, 3)
    for crop in crops:
        # An independent look: the detector run again on the crop (set in a margin, as
        # MTCNN wants context around a face) finds the landmarks on the template, the
        # pasted rotation undone.
        framed = np.pad(crop, ((56, 56), (56, 56), (0, 0)), constant_values=128)
        [again] = detector.detect(framed, min_confidence=0.5)
        assert np.abs(again.landmarks - 56 - template.template(112, 112)).max() < 6


def test_a_photo_without_a_face_or_unreadable_or_tiny_is_reported(tmp_path, monkeypatch):
    settings = photo_alignment.Settings()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 2)  # a bomb at 2x the limit
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(tmp_path / "bomb.png")
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(tmp_path / "wall.jpg")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    (tmp_path / "cut.jpg").write_bytes(open(tmp_path / "wall.jpg", "rb").read()[:300])
    Image.fromarray(np.zeros((40, 40, 4), np.uint8), "CMYK").save(tmp_path / "cmyk.jpg")
    for name, reason in (("wall.jpg", "no face found"), ("dot.png", "smaller than 12 px"),
                         ("cut.jpg", "unreadable image"), ("cmyk.jpg", "no face found"),
                         ("bomb.png", "larger than Pillow's decompression-bomb limit")):
        entry, crops = photo_alignment.align_photo(str(tmp_path / name), settings)
        assert entry["reason"].startswith(reason) and crops.shape == (0, 112, 112, 3), name


@pytest.mark.slow
def test_the_graph_detector_is_the_mtcnn_packages_detect_faces(att_faces):
    import tensorflow as tf

    from kerasbn.faces import graph_detector
    from mtcnn import MTCNN
    module = graph_detector.GraphDetector()
    found = tf.function(lambda photo: module.detect(photo, min_confidence=0.0))
    reference = MTCNN()
    for photo in (data.astronaut(), np.repeat(composite(att_faces, PLACEMENTS), 3, axis=2),
                  np.full((120, 90, 3), 90, np.uint8)):
        boxes, confidence, landmarks = (t.numpy() for t in found(photo))
        want = sorted(reference.detect_faces(photo, output_type="numpy"),
                      key=lambda row: -row[3] * row[4])
        assert len(boxes) == len(want)
        for box, score, points, row in zip(boxes, confidence, landmarks, want):
            np.testing.assert_allclose(box, row[1:5], atol=1e-2)
            assert score == pytest.approx(row[5], abs=1e-5)
            np.testing.assert_allclose(points, np.stack([row[6:11], row[11:16]], 1), atol=1e-2)
