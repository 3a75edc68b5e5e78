"""AU code parsing, multi-hot vectors and the landmark AU stream against known AU intensities."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from faces import animated_astronaut
from merkit.errors import AnnotationError
from merkit.preprocess import au
from merkit.preprocess.face import track_landmarks


def codes(text, **kwargs) -> list[str]:
    return [str(c) for c in au.parse_au_string(text, **kwargs)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("R12A", ["R12A"]),
        ("L14", ["L14"]),
        ("AU4", ["4"]),
        ("4+7", ["4", "7"]),
        (" 4 + 7 ", ["4", "7"]),
        ("AU12+AU14", ["12", "14"]),
        ("au4+au7", ["4", "7"]),
        ("AU 4, AU 7", ["4", "7"]),
        ("R12+L14", ["R12", "L14"]),
        ("R12A+R14A", ["R12A", "R14A"]),
        ("1+2+26+5B", ["1", "2", "26", "5B"]),
        ("4 7", ["4", "7"]),
        ("R 12 A", ["R12A"]),
        ("12?", ["12?"]),
        ("12(?)", ["12?"]),
        ("(12)", ["12"]),
        ("4 or 7", ["4?", "7?"]),
        ("4/7", ["4?", "7?"]),
        ("1+4 or 7", ["1", "4?", "7?"]),
        ("4+4", ["4"]),
        (12.0, ["12"]),
        (4, ["4"]),
        (np.float64(26.0), ["26"]),
        ("", []),
        ("   ", []),
        (None, []),
        (float("nan"), []),
        ("-", []),
        ("?", []),
        ("none", []),
        ("AU61+AU4", ["4"]),  # eye movement: a FACS code outside the vocabulary, skipped
    ],
)
def test_parse_au_string(text, expected):
    assert codes(text) == expected


def test_parsed_fields_and_alternative_policy():
    (code,) = au.parse_au_string("R12A")
    assert (code.number, code.side, code.intensity, code.uncertain) == (12, "R", "A", False)
    assert (code.name, code.code) == ("AU12", "R12")
    assert codes("4 or 7", alternatives="first") == ["4?"]
    assert au.parse_au_string("L12")[0].side == "L" and au.parse_au_string("12")[0].side is None


@pytest.mark.parametrize("text", ["99", "3", "xyz", "12.5", "R12Z", 12.5])
def test_unknown_codes_raise_naming_the_string(text):
    with pytest.raises(AnnotationError, match=rf"CASME2.xlsx, row 7: AU string '?{re.escape(str(text))}"):
        au.parse_au_string(text, file="CASME2.xlsx", row=7)


def test_unknown_codes_can_be_skipped_and_recorded():
    skipped: list[str] = []
    assert codes("4+xyz+99+AU61", unknown="skip", skipped=skipped) == ["4"]
    assert skipped == ["XYZ", "99", "61"]


@pytest.mark.parametrize(
    ("cell", "drop", "keep_all", "terms"),
    [
        ("R12+L14A", ("R12", "L14A"), ("R12", "L14A"), ()),
        ("AU 4, AU 7", ("4", "7"), ("4", "7"), ()),
        ("r 12 + 15", ("R12", "15"), ("R12", "15"), ()),
        ("A1+2", ("A1", "2"), ("A1", "2"), ()),  # not FACS: kept as annotated (parse_au_string raises)
        ("AU61+4", ("61", "4"), ("61", "4"), ()),
        ("R12 or R15+R20", ("R20",), ("R12", "R15", "R20"), ("R12 or R15",)),
        ("4/7", (), ("4", "7"), ("4 or 7",)),
        ("4 or ?", (), ("4",), ("4 or ?",)),  # unsure whether it was AU 4: not a sure AU 4
        (4.0, ("4",), ("4",), ()),
        ("-", (), (), ()),
    ],
)
def test_loaders_split_au_cells_like_the_parser(cell, drop, keep_all, terms):
    """Loaders record AU codes as annotated through the same tokenizer the parser validates."""
    from merkit.data.annotations import au_term_groups, parse_aus

    assert parse_aus(cell, "drop") == (drop, terms)
    assert parse_aus(cell, "all") == (keep_all, terms)
    if isinstance(cell, str):
        assert len(au_term_groups(cell)) == len(drop) + len(terms)


def test_au_multi_hot():
    vector = au.au_multi_hot(au.parse_au_string("R12A+L12+4 or 7") + au.parse_au_string("AU1"))
    assert vector.shape == (len(au.AU_VOCAB),) and vector.dtype == np.float32
    expected = {1: 1.0, 4: 1.0, 7: 1.0, 12: 1.0}
    assert {au.AU_VOCAB[i]: v for i, v in enumerate(vector) if v} == expected
    half = au.au_multi_hot(["4 or 7", "4"], uncertain_value=0.5)
    assert half[au.AU_VOCAB.index(4)] == 1.0 and half[au.AU_VOCAB.index(7)] == 0.5
    assert not au.au_multi_hot([]).any()
    with pytest.raises(AnnotationError):
        au.au_multi_hot([au.AUCode(61)])


def test_vocabulary_covers_the_datasets():
    for number in (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 18, 20, 23, 24, 25, 26, 27, 38, 39, 43):
        assert number in au.AU_VOCAB
    assert len(set(au.AU_VOCAB)) == len(au.AU_VOCAB) and set(au.AU_VOCAB) <= au.FACS_CODES


# --------------------------------------------------------------------------- geometric proxies


def test_proxies_are_invariant_to_similarity_transforms():
    rng = np.random.default_rng(0)
    points = rng.uniform(20, 100, size=(3, 68, 2))
    angle, scale, shift = np.radians(12.0), 1.7, np.array([15.0, -4.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(au.au_proxies(points @ rotation.T + shift), au.au_proxies(points), atol=1e-5)


def test_every_vocabulary_au_has_a_signal():
    """No AU channel of the stream is always zero: each maps to at least one proxy that exists."""
    assert set(au.AU_FROM_PROXIES) == set(au.AU_VOCAB)
    known = set(au.AU_PROXY_NAMES) | set(au.APPEARANCE_PROXY_NAMES)
    for number, pairs in au.AU_FROM_PROXIES.items():
        assert pairs and all(name in known for name, _ in pairs), number
    rng = np.random.default_rng(0)
    stream = rng.normal(size=(6, len(au.AU_PROXY_NAMES)))
    appearance = rng.normal(size=(6, len(au.APPEARANCE_PROXY_NAMES)))
    vocab = au.au_vocab_intensities(stream, appearance=appearance)
    assert vocab.shape == (6, len(au.AU_VOCAB)) and (np.abs(vocab) > 0).all(axis=0).all()
    appearance_aus = {11, 21, 31}
    without = au.au_vocab_intensities(stream)  # no frames: only the appearance AUs are zero
    assert {n for n, column in zip(au.AU_VOCAB, without.T) if not column.any()} == appearance_aus


def test_proxies_hand_case():
    """A face frame with eye corners on y = 0, inter-ocular distance 40 px: proxies in hand units."""
    points = np.zeros((68, 2))
    points[[36, 39, 42, 45]] = [[-30, 0], [-10, 0], [10, 0], [30, 0]]  # eye corner midpoints -20, +20
    points += [100.0, 50.0]
    points[21] = [90, 30]  # inner brows 20 px above the eye line
    points[22] = [110, 30]
    points[[37, 38]] = [[85, 44], [75, 44]]  # subject's right eye: lids 12 px apart
    points[[41, 40]] = [[85, 56], [75, 56]]
    points[48], points[54] = [80, 90], [120, 88]
    points[62], points[66] = [100, 92], [100, 100]
    points[31], points[35] = [92, 70], [108, 70]  # nostril wings 16 px apart
    points[2], points[14] = [50, 80], [150, 84]  # face outline at the cheeks
    points[[56, 57, 58]] = [[104, 104], [100, 106], [96, 104]]
    points[8] = [100, 130]
    proxies = dict(zip(au.AU_PROXY_NAMES, au.au_proxies(points)))
    assert proxies["lip_corner_in_r"] == pytest.approx(-20 / 40) and proxies["lip_corner_in_l"] == pytest.approx(-20 / 40)
    assert proxies["lower_lip_depress"] == pytest.approx((np.mean([104, 106, 104]) - 130) / 40)
    assert proxies["nose_width"] == pytest.approx(16 / 40)
    assert proxies["cheek_width"] == pytest.approx(np.hypot(100, 4) / 40)
    assert proxies["inner_brow_raise_r"] == pytest.approx(20 / 40)
    assert proxies["brow_lower"] == pytest.approx(-20 / 40)
    assert proxies["eye_open_r"] == pytest.approx(12 / 40)
    assert proxies["upper_lid_raise_r"] == pytest.approx(6 / 40)
    assert proxies["lower_lid_raise_r"] == pytest.approx(-6 / 40)
    assert proxies["lip_corner_pull_r"] == pytest.approx(-40 / 40)
    assert proxies["lip_corner_pull_l"] == pytest.approx(-38 / 40)
    assert proxies["lip_stretch"] == pytest.approx(np.hypot(40, 2) / 40)
    assert proxies["lips_part"] == pytest.approx(8 / 40)
    assert proxies["lip_corner_depress_r"] == pytest.approx((40 - 46) / 40)


def test_au_stream_is_relative_to_onset():
    rng = np.random.default_rng(1)
    landmarks = rng.uniform(20, 100, size=(5, 68, 2))
    landmarks[:, [36, 39, 42, 45]] = [[10, 50], [30, 50], [50, 50], [70, 50]]
    stream = au.au_stream(landmarks, onset_index=2)
    assert stream.shape == (5, len(au.AU_PROXY_NAMES))
    np.testing.assert_allclose(stream[2], 0.0)
    proxies = au.au_proxies(landmarks)
    np.testing.assert_allclose(stream[4], proxies[4] - proxies[2], atol=1e-6)  # apex - onset
    vocab = au.au_vocab_intensities(stream)
    assert vocab.shape == (5, len(au.AU_VOCAB))
    column = au.AU_PROXY_NAMES.index
    np.testing.assert_allclose(
        vocab[:, au.AU_VOCAB.index(43)], -(stream[:, column("eye_open_r")] + stream[:, column("eye_open_l")]) / 2, atol=1e-6
    )


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# AU -> threshold on the correlation of its proxy with the true intensity over frames
ASTRONAUT_AUS = {"1": 0.8, "2": 0.8, "12": 0.8, "15": 0.8, "26": 0.8, "7": 0.8}


@pytest.mark.parametrize("code", sorted(ASTRONAUT_AUS, key=int))
def test_proxies_track_animated_aus_on_a_real_face(code):
    """One AU at a time on the astronaut (displacement 0.1 x inter-ocular distance, about 4 px)
    with 1-3 px / 1 deg head motion; dlib landmarks tracked over 9 frames."""
    rng = np.random.default_rng(int(code))
    rigid = [(0.0, 0.0, 0.0)] + [(rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-1, 1)) for _ in range(8)]
    clip = animated_astronaut({code: 1.0}, rigid, 9, 192, amplitude=0.1)
    intensities = au.au_vocab_intensities(au.au_stream(track_landmarks(clip.frames)))
    assert correlation(intensities[:, au.AU_VOCAB.index(int(code))], clip.intensity) > ASTRONAUT_AUS[code]


def test_proxies_track_synthme_ground_truth_landmarks():
    from merkit.data.synthetic import PRESETS, generate_clip

    config = dataclasses.replace(PRESETS["default"], size=96, fps=60.0, blink_probability=0.0)
    for emotion in ("happiness", "surprise", "sadness", "disgust", "fear", "anger"):
        clip = generate_clip(config, 0, 0, seed=3, emotion=emotion)
        landmarks = np.stack([clip.landmarks_at(t) for t in range(len(clip.frames))])
        intensities = au.au_vocab_intensities(au.au_stream(landmarks, onset_index=clip.onset))
        for column, code in enumerate(clip.au_names):
            number = int(code.lstrip("LR"))
            if number in au.AU_FROM_PROXIES and clip.au_intensity[:, column].std() > 0:
                assert correlation(intensities[:, au.AU_VOCAB.index(number)], clip.au_intensity[:, column]) > 0.9, (emotion, code)


@pytest.mark.parametrize("code", ["14", "L14", "R14", "16", "9", "12", "15", "20", "23", "26"])
def test_every_synthme_action_raises_its_own_channel(code):
    """SynthME's displacement model as ground truth: the landmarks of a neutral SynthME face
    moved by one AU's field at rising intensity raise that AU's channel (AU14 and AU16 had no
    channel before; the others guard the signs)."""
    from merkit.data.synthetic import PRESETS, generate_clip
    from merkit.data.synthme.actions import FaceGeometry, au_components

    config = dataclasses.replace(PRESETS["default"], size=128, blink_probability=0.0)
    neutral = generate_clip(config, 0, 0, seed=1, emotion="happiness").landmarks_at(0).astype(np.float64)
    field = au_components({code: 1.0}, FaceGeometry.from_landmarks68(neutral))
    shift = field.evaluate(neutral[:, 0], neutral[:, 1])
    levels = np.linspace(0.0, 1.0, 5)
    landmarks = np.stack([neutral + level * shift for level in levels])
    channel = au.au_vocab_intensities(au.au_stream(landmarks))[:, au.AU_VOCAB.index(int(code.lstrip("LR")))]
    assert np.all(np.diff(channel) > 0) and channel[-1] > 1e-3, channel


def test_appearance_proxies_see_wrinkles_where_their_patches_are():
    """Stripes (a fold) painted into one patch raise that patch's texture energy only; a patch
    outside the frame gives no change; the onset row is zero."""
    from faces import astronaut_face, neutral_landmarks

    onset = astronaut_face().copy()
    landmarks = np.stack([neutral_landmarks()] * 4).astype(np.float64)
    boxes = au.patch_boxes(landmarks[0])
    frames = np.stack([onset] * 4)
    for t, name in ((1, "nasolabial_furrow_r"), (2, "masseter_l"), (3, "neck_texture")):
        (cx, cy), half = boxes[name]
        y0, y1, x0, x1 = int(cy - half), int(cy + half), int(cx - half), int(cx + half)
        stripes = 40 * np.sin(np.arange(x1 - x0) * 2 * np.pi / 5)[None, :, None]  # folds 5 px apart
        frames[t, y0:y1, x0:x1] = np.clip(frames[t, y0:y1, x0:x1] + stripes, 0, 255).astype(np.uint8)
    stream = au.appearance_stream(frames, landmarks)
    column = au.APPEARANCE_PROXY_NAMES.index
    assert not stream[0].any()
    for t, name in ((1, "nasolabial_furrow_r"), (2, "masseter_l"), (3, "neck_texture")):
        assert stream[t, column(name)] > 0.3 * au.APPEARANCE_SCALE, (name, stream[t])
        others = [q for q in range(stream.shape[1]) if q != column(name)]
        assert np.abs(stream[t, others]).max() < 0.05 * au.APPEARANCE_SCALE, (name, stream[t])
    energies = au.appearance_proxies(frames, landmarks)
    np.testing.assert_allclose(stream, au.APPEARANCE_SCALE * (energies - energies[0]), atol=1e-6)
    vocab = au.au_vocab_intensities(au.au_stream(landmarks), appearance=stream)
    assert vocab[1, au.AU_VOCAB.index(11)] > 0.015 and vocab[2, au.AU_VOCAB.index(31)] > 0.015
    assert vocab[3, au.AU_VOCAB.index(21)] > 0.03
    # a face crop that ends at the chin holds no neck (nor does one with a sliver of it): no change
    (_, cy), half = boxes["neck_texture"]
    for bottom in (int(landmarks[0, 8, 1]) + 2, int(cy - 0.2 * half)):
        assert not au.appearance_stream(frames[:, :bottom], landmarks)[:, column("neck_texture")].any()


def test_au_view_from_synthme_and_from_dlib(tmp_path):
    from merkit.data.sample import FrameSource, Sample
    from merkit.data.synthetic import load_synth_clip, write_synthme

    root = write_synthme(tmp_path, subjects=1, clips_per_subject=1, size=96, fps=60.0, seed=4)
    folder = next((root / "Cropped" / "sub01").iterdir())
    clip = load_synth_clip(root, 1, folder.name)
    frames = FrameSource.from_dir(folder)
    sample = Sample(dataset="synthme", subject="sub01", clip_id=folder.name, frames=frames, onset_frame=clip.onset_frame,
                    apex_frame=clip.apex_frame, offset_frame=clip.offset_frame, emotion=clip.emotion,
                    meta={"synthme_truth": str(folder / "synthme_truth.npz")})
    course = clip.frames[clip.onset : clip.offset + 1]
    positions = np.array([0, (clip.apex - clip.onset) // 2, clip.apex - clip.onset, len(course) - 1])
    view = au.au_view(sample, course, positions, source="synthme")  # landmarks from the clip's synthme_truth.npz
    truth = np.stack([clip.landmarks_at(clip.onset + p) for p in positions])  # landmarks of the re-rendered clip
    appearance = au.appearance_stream(course[positions], truth)
    np.testing.assert_allclose(view, au.au_vocab_intensities(au.au_stream(truth), appearance=appearance), atol=1e-6)
    assert view.shape == (4, len(au.AU_VOCAB)) and not view[0].any()
    # after a face step (here a translation by (6, 4) px) the true landmarks follow the crop
    import cv2

    move = np.array([[1.0, 0.0, 6.0], [0.0, 1.0, 4.0]])
    moved = np.stack([cv2.warpAffine(f, move, f.shape[1::-1], borderMode=cv2.BORDER_REFLECT) for f in course])
    transforms = np.broadcast_to(move, (len(course), 2, 3))
    followed = au.au_view(sample, moved, positions, source="synthme", transforms=transforms)
    inside = [a for a, number in enumerate(au.AU_VOCAB) if number != 21]  # the neck patch straddles the bottom edge
    np.testing.assert_allclose(followed[:, inside], view[:, inside], atol=0.002)
    misplaced = au.au_view(sample, moved, positions, source="synthme")  # patches left where the face was
    assert np.abs(misplaced[:, inside] - view[:, inside]).max() > 0.005

    astronaut = animated_astronaut({"12": 1.0}, None, 5, 192, amplitude=0.1)
    dlib_view = au.au_view(sample, astronaut.frames, np.array([0, 2, 4]), source="dlib")
    assert dlib_view.shape == (3, len(au.AU_VOCAB))
    assert dlib_view[1, au.AU_VOCAB.index(12)] > 0.03  # the apex frame: lip corners up by ~0.08 IOD
