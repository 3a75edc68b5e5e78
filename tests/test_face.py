"""Face detection, landmarks, alignment and stabilisation against a face with known motion."""

from __future__ import annotations

import numpy as np
import pytest

from faces import animated_astronaut, astronaut_face, neutral_landmarks
from merkit.errors import FaceNotFoundError
from merkit.preprocess import face

SIZE = 192


def residual_motion(aligned: face.AlignedClip, true_motion: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per frame, the largest distance in the output crop between where an onset point lands
    in frame t and where it lands in the onset frame: (T,)."""
    onset_positions = face.apply_transform(aligned.transforms[0], points)
    return np.array([
        np.linalg.norm(face.apply_transform(m, face.apply_transform(motion, points)) - onset_positions, axis=1).max()
        for m, motion in zip(aligned.transforms, true_motion)
    ])


def aligned_source(aligned: face.AlignedClip) -> np.ndarray:
    """Onset landmarks back in input coordinates."""
    return face.apply_transform(face.invert(aligned.transforms[0]), aligned.landmarks[0])


@pytest.fixture(scope="module")
def moving_clip():
    """8 frames: AU12 + AU1 micro-expression with 1-3 px head translation and ~1 deg rotation."""
    rigid = [(0, 0, 0), (1.0, -0.5, 0.4), (2.0, 1.2, -0.8), (-1.5, 2.5, 1.0), (3.0, -2.0, -1.1),
             (-2.5, -1.5, 0.9), (1.5, 3.0, -0.6), (-3.0, 1.0, 1.2)]
    return animated_astronaut({"12": 1.0, "1": 1.0}, rigid, len(rigid), SIZE)


@pytest.mark.parametrize("detector", ["mtcnn", "dlib"])
def test_both_detectors_find_the_face(detector):
    image = astronaut_face(SIZE)
    box = face.detect_face(image, detector, fallback=False)
    points = neutral_landmarks(SIZE)
    eyes_nose_mouth = points[[36, 45, 30, 48, 54]]
    assert box.detector == detector
    assert 60 < box.width < 130 and 60 < box.height < 140
    assert np.all(eyes_nose_mouth[:, 0] > box.x0) and np.all(eyes_nose_mouth[:, 0] < box.x1)
    assert np.all(eyes_nose_mouth[:, 1] > box.y0) and np.all(eyes_nose_mouth[:, 1] < box.y1)


def test_landmarks_are_plausible_and_follow_a_shift():
    points = neutral_landmarks(SIZE)
    eye_y = points[36:48, 1].mean()
    assert points[17:27, 1].mean() < eye_y < points[30, 1] < points[48:68, 1].mean() < points[8, 1]
    assert points[36:42, 0].mean() < points[30, 0] < points[42:48, 0].mean()  # subject's right eye is image left
    # the same face moved by a known sub-pixel amount, without detection help
    shift = (2.5, -1.5)
    moved = animated_astronaut(None, [(0, 0, 0), (*shift, 0.0)], 2, SIZE).frames[1]
    for detector in ("mtcnn", "dlib"):
        moved_points = face.landmarks68(moved, detector=detector)
        error = moved_points - points - shift
        assert np.abs(error.mean(axis=0)).max() < 0.5
        assert np.linalg.norm(error, axis=1).mean() < 1.5


def test_no_face_names_sample_and_frame():
    blank = np.full((120, 120, 3), 128, dtype=np.uint8)
    with pytest.raises(FaceNotFoundError, match=r"casme2/sub01/EP01.*frame 3"):
        face.detect_face(blank, "mtcnn", sample_id="casme2/sub01/EP01", frame=3)
    with pytest.raises(FaceNotFoundError, match="casme2/sub01/EP01"):
        face.align_clip(np.stack([blank, blank]), sample_id="casme2/sub01/EP01")


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 100, size=(10, 2))
    angle, scale = np.radians(7.0), 1.3
    truth = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 4.0], [scale * np.sin(angle), scale * np.cos(angle), -2.5]])
    target = face.apply_transform(truth, source)
    np.testing.assert_allclose(face.fit_similarity(source, target), truth, atol=1e-9)
    rigid = face.fit_similarity(source, face.apply_transform(truth, source) / scale, with_scale=False)
    np.testing.assert_allclose(np.linalg.det(rigid[:, :2]), 1.0, atol=1e-12)


def test_warp_image_downscaling_keeps_geometry():
    image = np.zeros((200, 200), dtype=np.float32)
    image[119:122, 59:62] = 1.0  # a blob centred on (60, 120)
    transform = face.compose(np.array([[0.2, 0, 3.0], [0, 0.2, 1.0]]), np.eye(2, 3))
    small = face.warp_image(image, transform, (40, 40))
    ys, xs = np.mgrid[0:40, 0:40]
    centroid = np.array([(small * xs).sum(), (small * ys).sum()]) / small.sum()
    np.testing.assert_allclose(centroid, face.apply_transform(transform, np.array([60.0, 120.0])), atol=0.05)
    assert small.sum() == pytest.approx(image.sum() * 0.04, rel=0.02)  # area-averaged, not aliased


def test_alignment_puts_the_onset_face_on_canonical_points():
    rotated = animated_astronaut(None, [(0, 0, 0), (4.0, -3.0, 6.0)], 2, SIZE).frames[1:]
    aligned = face.align_clip(rotated, size=(112, 112), margin=0.1)
    assert aligned.frames.shape == (1, 112, 112, 3)
    target = face.canonical_points((112, 112), 0.1)
    got = face.alignment_points(aligned.landmarks[0])
    assert np.linalg.norm(got - target, axis=1).max() < 3.0
    eye_line = got[1] - got[0]
    assert abs(np.degrees(np.arctan2(eye_line[1], eye_line[0]))) < 1.5


def test_stabilisation_removes_head_motion(moving_clip):
    points = neutral_landmarks(SIZE)[list(face.STABLE_POINTS) + list(range(17, 27))]  # eyes, nose, brows
    figures = {}
    for method in ("none", "landmarks", "ecc"):
        aligned = face.align_clip(moving_clip.frames, size=(SIZE, SIZE), margin=0.4, stabilise=method)
        scale = np.sqrt(np.linalg.det(aligned.transforms[0][:, :2]))
        assert 0.8 < scale < 1.25  # output pixels are about input pixels
        figures[method] = residual_motion(aligned, moving_clip.transforms, points)
    assert figures["none"][1:].max() > 2.0  # the head motion is there without stabilisation
    assert figures["ecc"].max() < 0.5
    assert figures["landmarks"].max() < 1.5
    assert figures["ecc"].mean() < figures["landmarks"].mean() < figures["none"].mean()


def test_alignment_is_one_transform_without_stabilisation(moving_clip):
    aligned = face.align_clip(moving_clip.frames[:3], size=(96, 96))
    np.testing.assert_array_equal(aligned.transforms[1], aligned.transforms[0])
    # aligned landmarks move with the head: onset landmarks through the head motion
    expected = face.apply_transform(aligned.transforms[0], face.apply_transform(moving_clip.transforms[2], aligned_source(aligned)))
    assert np.linalg.norm(aligned.landmarks[2][27:36] - expected[27:36], axis=1).mean() < 1.0


@pytest.mark.parametrize("box_from", ["detector", "landmarks"])
def test_crop_box_clip(moving_clip, box_from):
    cropped = face.crop_box_clip(moving_clip.frames[:2], size=(64, 64), detector="mtcnn", box_from=box_from)
    assert cropped.frames.shape == (2, 64, 64, 3)
    transform = cropped.transforms[0]
    if box_from == "detector":
        box = cropped.box
        side = max(box.width, box.height)
        cx, cy = box.center
        corners = np.array([[cx - side / 2 - 0.5, cy - side / 2 - 0.5], [cx + side / 2 - 0.5, cy + side / 2 - 0.5]])
        np.testing.assert_allclose(face.apply_transform(transform, corners), [[-0.5, -0.5], [63.5, 63.5]], atol=1e-9)
        assert cropped.landmarks is None
    else:
        onset = cropped.landmarks[0]
        assert onset.min() > -1 and onset.max() < 65
        assert onset[:, 0].max() - onset[:, 0].min() > 55 or onset[:, 1].max() - onset[:, 1].min() > 55
