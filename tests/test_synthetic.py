"""SynthME: ground truth that can be checked against the rendered pixels, and its on-disk layout."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from openpyxl import load_workbook

from merkit.data.sample import FrameSource, read_image
from merkit.data.synthetic import (
    CODING_COLUMNS,
    CODING_FILE,
    GROUND_TRUTH_FILE,
    PRESETS,
    SUPPORTED_AUS,
    FaceGeometry,
    SynthConfig,
    au_displacement,
    generate_clip,
    load_synth_clip,
    write_synthme,
)
from merkit.errors import ConfigError, DatasetError

SMALL = {"size": 64, "fps": 60.0}
# noise, JPEG loss, blinks and illumination off: only interpolation separates warp and truth
CLEAN = {"noise_std": 0.0, "jpeg_quality": 100, "blink_probability": 0.0, "illumination_gain": 0.0,
         "illumination_gradient": 0.0}


def _warp_back(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """frame(x + flow(x)): the onset frame predicted from a later frame and the onset->t flow."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(frame.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_CUBIC,
                     borderMode=cv2.BORDER_REFLECT)


def _face_region(clip, margin: int = 4) -> np.ndarray:
    mask = clip.depth_at(clip.onset) > 0
    mask[:margin] = mask[-margin:] = False
    mask[:, :margin] = mask[:, -margin:] = False
    return mask


def _warp_ratio(clip, mask: np.ndarray) -> float:
    onset = clip.frames[clip.onset].astype(np.float32)
    apex = clip.frames[clip.apex].astype(np.float32)
    warped = _warp_back(apex, clip.flow_at(clip.apex))
    return float(np.abs(warped - onset)[mask].mean() / np.abs(apex - onset)[mask].mean())


@pytest.mark.parametrize("emotion", ["happiness", "surprise", "disgust", "repression"])
def test_ground_truth_flow_explains_the_apex_frame_tightly(emotion):
    """What is left is interpolation error, largest where thin dark lines (lids, lip line) are compressed."""
    config = SynthConfig.from_preset("default", fps=100.0, head_translation=0.0, head_rotation=0.0, **CLEAN)
    clip = generate_clip(config, 1, 2, seed=0, emotion=emotion)
    assert _warp_ratio(clip, _face_region(clip)) < 0.4


@pytest.mark.parametrize("emotion", ["happiness", "surprise", "others"])
def test_ground_truth_flow_explains_the_apex_frame_with_all_nuisances(emotion):
    config = SynthConfig.from_preset("default", size=96, fps=100.0, blink_probability=0.0)
    clip = generate_clip(config, 0, 1, seed=3, emotion=emotion)
    moving = _face_region(clip) & (np.linalg.norm(clip.expression_flow_at(clip.apex), axis=-1) > 0.5)
    assert moving.sum() > 50
    assert _warp_ratio(clip, moving) < 0.5
    assert _warp_ratio(clip, _face_region(clip)) < 0.9


def test_head_motion_flow_is_exact_rigid_motion():
    config = SynthConfig.from_preset("default", size=96, fps=100.0, amplitude=0.0, head_translation=2.0,
                                     head_rotation=1.5, **CLEAN)
    clip = generate_clip(config, 1, 2, seed=0)
    last = len(clip) - 1
    flow = clip.flow_at(last)
    assert np.abs(clip.expression_flow_at(last)).max() == 0
    onset = clip.frames[clip.onset].astype(np.float32)
    frame = clip.frames[last].astype(np.float32)
    mask = _face_region(clip)
    error = np.abs(_warp_back(frame, flow) - onset)[mask].mean()
    assert error < 0.3 * np.abs(frame - onset)[mask].mean()
    assert error < 0.3 * np.abs(_warp_back(frame, -flow) - onset)[mask].mean()  # the sign matters


def test_flow_is_what_opencv_estimates():
    """Farneback on (onset, apex) recovers the ground truth: OpenCV's convention, and texture to lock onto."""
    clip = generate_clip(SynthConfig.from_preset("default", fps=100.0), 0, 1, seed=0, emotion="surprise")
    gray = [cv2.cvtColor(clip.frames[i], cv2.COLOR_RGB2GRAY) for i in (clip.onset, clip.apex)]
    estimate = cv2.calcOpticalFlowFarneback(gray[0], gray[1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
    truth = clip.flow_at(clip.apex)
    moving = np.linalg.norm(clip.expression_flow_at(clip.apex), axis=-1) > 1.0
    error = np.linalg.norm(estimate - truth, axis=-1)[moving].mean()
    assert error < 0.35 * np.linalg.norm(truth, axis=-1)[moving].mean()
    assert error < 0.2 * np.linalg.norm(estimate + truth, axis=-1)[moving].mean()


def test_forward_flow_inverts_the_backward_map():
    clip = generate_clip(SynthConfig.from_preset("default", **SMALL), 0, 0, seed=1, emotion="surprise")
    points = np.random.default_rng(0).uniform(4, 60, size=(500, 2))
    for t in (clip.onset, clip.apex, len(clip) - 1):
        moved = clip.track(t, points)
        assert np.abs(clip.backward_map(t, moved) - points).max() < 1e-4
    # the grid map used for rendering is the same function
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float64)
    grid = np.stack([xs, ys], axis=-1)
    assert np.abs(clip.backward_map(clip.apex) - clip.backward_map(clip.apex, grid)).max() < 1e-3
    assert np.array_equal(clip.backward_map(clip.onset), grid.astype(np.float32))


def test_apex_is_the_peak_of_intensity_and_true_flow():
    config = SynthConfig.from_preset("default", **SMALL, head_translation=0.0, head_rotation=0.0)
    for clip_index in range(3):
        clip = generate_clip(config, 2, clip_index, seed=5)
        onset, apex, offset = clip.onset, clip.apex, clip.offset
        assert 0 < onset < apex < offset < len(clip) - 1
        assert clip.intensity[apex] == 1.0 and int(np.argmax(clip.intensity)) == apex
        assert np.all(clip.intensity[: onset + 1] == 0) and np.all(clip.intensity[offset:] == 0)
        assert np.all(np.diff(clip.intensity[onset: apex + 1]) > 0)
        assert np.all(np.diff(clip.intensity[apex: offset + 1]) < 0)
        assert np.allclose(clip.au_intensity[apex], [clip.aus[name] for name in clip.au_names])
        magnitude = [np.linalg.norm(clip.flow_at(t), axis=-1).mean() for t in range(len(clip))]
        assert int(np.argmax(magnitude)) == apex
        expression = [np.linalg.norm(clip.expression_flow_at(t), axis=-1).max() for t in (apex - 1, apex, apex + 1)]
        assert expression[1] > max(expression[0], expression[2])


def test_timing_follows_the_config():
    config = SynthConfig.from_preset("default", size=64)
    for clip_index in range(4):
        clip = generate_clip(config, 0, clip_index, seed=2)
        duration = (clip.offset - clip.onset) / clip.fps
        assert 0.2 - 1e-9 <= duration <= 0.5 + 1e-9
        assert 3 <= clip.onset <= 10 and 3 <= len(clip) - 1 - clip.offset <= 10
        assert 30 <= clip.first_frame <= 200


@pytest.fixture(scope="module")
def geometry() -> FaceGeometry:
    return generate_clip(SynthConfig.from_preset("default", fps=30.0), 0, 0, seed=0).geometry


def _at(field: np.ndarray, point) -> np.ndarray:
    x, y = (int(round(v)) for v in point)
    return field[y, x]


def test_each_au_moves_its_region_in_its_direction(geometry):
    g = geometry
    shape = (128, 128)
    mid = lambda a, b: ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)  # noqa: E731
    field = {au: au_displacement({au: 1.0}, g, shape) for au in SUPPORTED_AUS}
    lower_eyelid = lambda eye: (eye[0], eye[1] + g.eye_half_height)  # noqa: E731
    upper_eyelid = lambda eye: (eye[0], eye[1] - g.eye_half_height)  # noqa: E731
    # subject's right (R) is the image left: outward there is -x
    for inner, outer, outward in ((g.right_brow_inner, g.right_brow_outer, -1), (g.left_brow_inner, g.left_brow_outer, 1)):
        assert _at(field["1"], inner)[1] < -1.0 and _at(field["1"], inner)[1] < _at(field["1"], outer)[1]
        assert _at(field["2"], outer)[1] < -0.5 and _at(field["2"], outer)[1] < _at(field["2"], inner)[1]
        assert _at(field["4"], inner)[1] > 0.5 and _at(field["4"], inner)[0] * outward < -0.3  # down, together
    for eye, corner, cheek, outward in ((g.right_eye, g.mouth_right, g.right_cheek, -1), (g.left_eye, g.mouth_left, g.left_cheek, 1)):
        assert _at(field["5"], upper_eyelid(eye))[1] < -0.5
        assert _at(field["6"], cheek)[1] < -0.5 and _at(field["6"], lower_eyelid(eye))[1] < 0
        assert _at(field["7"], lower_eyelid(eye))[1] < -0.5 and _at(field["7"], upper_eyelid(eye))[1] > 0.2
        dx, dy = _at(field["12"], corner)
        assert dy < -0.5 and dx * outward > 0.5  # corners up and out
        assert _at(field["14"], corner)[0] * outward < -0.5  # corners in
        assert _at(field["15"], corner)[1] > 0.5  # corners down
        dx, dy = _at(field["20"], corner)
        assert dx * outward > 1.0 and abs(dx) > 3 * abs(dy)  # stretched sideways
    nose_side = (g.nose_tip[0] - g.nose_half_width, 0.4 * g.nose_root[1] + 0.6 * g.nose_tip[1])
    assert _at(field["9"], nose_side)[1] < -0.5
    assert _at(field["10"], g.upper_lip_top)[1] < -0.5 and abs(_at(field["10"], g.chin)[1]) < 0.1
    assert _at(field["16"], g.lower_lip_bottom)[1] > 0.5
    assert _at(field["17"], mid(g.lower_lip_bottom, g.chin))[1] < -0.5
    assert _at(field["23"], g.upper_lip_top)[1] > 0.3 and _at(field["23"], g.lower_lip_bottom)[1] < -0.3
    assert _at(field["25"], g.upper_lip_top)[1] < -0.2 and _at(field["25"], g.lower_lip_bottom)[1] > 0.5
    assert _at(field["26"], g.chin)[1] > 1.0 and abs(_at(field["26"], g.nose_tip)[1]) < 0.1
    # locality: mouth AUs leave the brows alone, brow AUs the mouth
    for au in ("12", "15", "20", "26"):
        assert np.abs(_at(field[au], g.right_brow_inner)).max() < 0.05
    assert np.abs(_at(field["1"], g.mouth_right)).max() < 0.05


def test_unilateral_codes_act_on_the_subjects_side(geometry):
    g = geometry
    left = au_displacement({"L12": 1.0}, g, (128, 128))  # subject's left = image right
    right = au_displacement({"R12": 1.0}, g, (128, 128))
    assert g.mouth_left[0] > g.mouth_right[0]
    assert _at(left, g.mouth_left)[1] < -0.5 and np.abs(_at(left, g.mouth_right)).max() < 0.05
    assert _at(right, g.mouth_right)[1] < -0.5 and np.abs(_at(right, g.mouth_left)).max() < 0.05
    both = au_displacement({"12": 1.0}, g, (128, 128))
    np.testing.assert_allclose(both, left + right, atol=1e-5)
    with pytest.raises(ConfigError):
        au_displacement({"99": 1.0}, g, (64, 64))


def test_field_is_linear_in_intensity_and_amplitude(geometry):
    half = au_displacement({"6": 0.5, "12": 0.5}, geometry, (64, 64), amplitude=2.0)
    full = au_displacement({"6": 1.0, "12": 1.0}, geometry, (64, 64), amplitude=1.0)
    np.testing.assert_allclose(half, full, atol=1e-6)
    peak = np.linalg.norm(au_displacement({"4": 1.0}, geometry, (64, 64), amplitude=3.0), axis=-1).max()
    assert 2.5 < peak < 3.5


def test_geometry_from_landmarks_of_the_rendered_face():
    clip = generate_clip(SynthConfig.from_preset("default", **SMALL), 1, 0, seed=0, emotion="happiness")
    landmarks = clip.landmarks_at(clip.onset)
    rebuilt = FaceGeometry.from_landmarks68(landmarks)
    np.testing.assert_allclose(rebuilt.mouth_left, clip.geometry.mouth_left, atol=1e-4)
    assert landmarks[36, 0] < landmarks[39, 0] < landmarks[42, 0] < landmarks[45, 0]  # dlib order
    assert landmarks[8, 1] == landmarks[:, 1].max()  # chin lowest
    # landmarks move with the flow; the lip corners rise in happiness
    apex = clip.landmarks_at(clip.apex)
    flow = clip.flow_at(clip.apex)
    for index in (48, 54, 30, 8):
        x, y = landmarks[index]
        sampled = cv2.remap(flow, np.float32([[x]]), np.float32([[y]]), cv2.INTER_LINEAR)[0, 0]
        np.testing.assert_allclose(apex[index] - landmarks[index], sampled, atol=0.05)
    assert apex[48, 1] < landmarks[48, 1] - 0.5 and apex[54, 1] < landmarks[54, 1] - 0.5
    with pytest.raises(ConfigError):
        FaceGeometry.from_landmarks68(np.zeros((5, 2)))


def test_depth_is_plausible():
    clip = generate_clip(SynthConfig.from_preset("default", **SMALL), 0, 0, seed=0)
    depth = clip.depth_at(clip.apex)
    assert depth.dtype == np.float32 and depth.min() >= 0 and depth.max() <= 1
    assert depth[0, 0] == 0 and depth[0, -1] == 0  # background
    g = clip.geometry
    nose = _at(depth, g.nose_tip)
    assert nose > _at(depth, g.right_cheek) > 0 and nose > _at(depth, g.right_eye) > 0


def test_blinks_close_the_lids_without_moving_the_flow():
    config = SynthConfig.from_preset("default", **SMALL, blink_probability=1.0, **{k: v for k, v in CLEAN.items() if k != "blink_probability"})
    clip = generate_clip(config, 0, 0, seed=0)
    closed = int(np.argmax(clip.blink))
    assert clip.blink[closed] >= 0.5
    open_lids, closed_lids = clip.landmarks_at(clip.onset), clip.landmarks_at(closed)
    head = clip.track(closed, open_lids.astype(np.float64))  # where the open-lid points went
    assert np.all(closed_lids[[37, 38, 43, 44], 1] > head[[37, 38, 43, 44], 1] + 1.0)
    assert np.allclose(closed_lids[:36], head[:36], atol=1e-4)
    eye = clip.geometry.right_eye
    x, y = int(round(eye[0])), int(round(eye[1]))
    patch = lambda t: clip.frames[t, y - 2: y + 3, x - 3: x + 4].astype(float)  # noqa: E731
    assert np.abs(patch(closed) - patch(clip.onset)).mean() > 10


def test_subjects_differ_and_clips_of_a_subject_share_identity():
    config = SynthConfig.from_preset("default", **SMALL)
    clips = {(s, c): generate_clip(config, s, c, seed=0) for s in range(3) for c in range(2)}
    neutral = lambda clip: clip.frames[clip.onset].astype(np.float32)  # noqa: E731
    same = [np.abs(neutral(clips[s, 0]) - neutral(clips[s, 1])).mean() for s in range(3)]
    cross = [np.abs(neutral(clips[a, 0]) - neutral(clips[b, 1])).mean() for a in range(3) for b in range(3) if a != b]
    assert max(same) < 4.0
    assert min(cross) > 5 * max(same)


def test_emotions_map_to_their_aus():
    config = SynthConfig.from_preset("default", **SMALL, drop_au_probability=0.0, extra_au_probability=0.0)
    expected = {"happiness": {"6", "12"}, "sadness": {"1", "4", "15"}, "surprise": {"1", "2", "5", "26"},
                "fear": {"1", "2", "4", "5", "7", "20", "26"}, "anger": {"4", "5", "7", "23"}}
    for emotion, aus in expected.items():
        clip = generate_clip(config, 0, 0, seed=0, emotion=emotion)
        assert set(clip.aus) == aus and clip.emotion == emotion
        assert all(0.6 <= v <= 1.0 for v in clip.aus.values())
    seen = {frozenset(generate_clip(config, 0, c, seed=0, emotion="contempt").aus) for c in range(8)}
    assert seen <= {frozenset({"L12", "L14"}), frozenset({"R12", "R14"})}
    for c in range(6):
        assert set(generate_clip(config, 0, c, seed=0, emotion="repression").aus) <= {"14", "15", "17"}
        assert len(generate_clip(config, 0, c, seed=0, emotion="others").aus) == 1
    # default: casme2-5 round-robin, rotated per subject
    assert [generate_clip(config, 1, c, seed=0).emotion for c in range(5)] == ["disgust", "repression", "surprise", "others", "happiness"]
    with pytest.raises(ConfigError):
        generate_clip(config, 0, 0, seed=0, emotion="joy")


def test_hard_preset_is_harder():
    assert PRESETS["hard"].amplitude < PRESETS["default"].amplitude
    assert PRESETS["hard"].noise_std > PRESETS["default"].noise_std
    assert PRESETS["hard"].jpeg_quality < PRESETS["default"].jpeg_quality
    easy = generate_clip(SynthConfig.from_preset("default", **SMALL), 0, 0, seed=0)
    hard = generate_clip(SynthConfig.from_preset("hard", **SMALL), 0, 0, seed=0)
    assert easy.aus == hard.aus
    ratio = hard.peak_displacement / easy.peak_displacement
    assert ratio == pytest.approx(0.5, abs=1e-3)
    peak = lambda clip: np.linalg.norm(clip.expression_flow_at(clip.apex), axis=-1).max()  # noqa: E731
    assert peak(hard) < 0.6 * peak(easy)


def test_config_validation():
    with pytest.raises(ConfigError):
        SynthConfig(size=8)
    with pytest.raises(ConfigError):
        SynthConfig(jpeg_quality=0)
    with pytest.raises(ConfigError):
        SynthConfig(emotions=("joy",))
    with pytest.raises(ConfigError):
        SynthConfig(apex_fraction_range=(0.0, 0.5))
    with pytest.raises(ConfigError):
        SynthConfig.from_preset("nightmare")
    with pytest.raises(ConfigError):
        SynthConfig.from_preset("default", amplitud=2.0)
    with pytest.raises(ConfigError, match="fold"):
        generate_clip(SynthConfig.from_preset("default", **SMALL, amplitude=12.0), 0, 0, seed=0)
    config = SynthConfig.from_preset("hard", size=80)
    assert SynthConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthme(tmp_path_factory.mktemp("synthme") / "a", subjects=2, clips_per_subject=3, seed=7, **SMALL)


def test_same_seed_same_bytes_other_seed_other_bytes(dataset, tmp_path):
    again = write_synthme(tmp_path / "b", subjects=2, clips_per_subject=3, seed=7, **SMALL)
    assert _tree_hash(dataset) == _tree_hash(again)
    other = write_synthme(tmp_path / "c", subjects=2, clips_per_subject=3, seed=8, **SMALL)
    assert (other / CODING_FILE).read_bytes() != (dataset / CODING_FILE).read_bytes()
    first = lambda root: sorted((root / "Cropped" / "sub01").rglob("*.jpg"))[0].read_bytes()  # noqa: E731
    assert first(other) != first(dataset)


def test_layout_and_coding_file_match_casme2(dataset):
    workbook = load_workbook(dataset / CODING_FILE)
    assert len(workbook.sheetnames) == 1
    rows = list(workbook.active.iter_rows(values_only=True))
    assert rows[0] == CODING_COLUMNS
    assert len(rows) == 1 + 2 * 3
    truth = json.loads((dataset / GROUND_TRUTH_FILE).read_text())
    assert truth["seed"] == 7 and truth["config"]["size"] == 64
    names: dict[int, set[str]] = {}
    for (subject, filename, onset, apex, offset, aus, emotion), record in zip(rows[1:], truth["clips"]):
        assert isinstance(subject, int) and isinstance(onset, int)
        assert re.fullmatch(r"EP\d\d_\d\d[a-z]?", filename)
        assert re.fullmatch(r"([LR]?\d+)(\+[LR]?\d+)*", aus)
        assert emotion in ("happiness", "disgust", "repression", "surprise", "others")
        names.setdefault(subject, set()).add(filename)
        source = FrameSource.from_dir(dataset / "Cropped" / f"sub{subject:02d}" / filename)
        assert all(p.name == f"reg_img{n}.jpg" for p, n in zip(source.paths, source.numbers))
        assert list(source.numbers) == list(range(source.numbers[0], source.numbers[-1] + 1))
        assert source.numbers[0] < onset < apex < offset < source.numbers[-1]
        assert (record["subject"], record["filename"], record["onset_frame"], record["apex_frame"], record["offset_frame"],
                record["action_units"], record["emotion"]) == (subject, filename, onset, apex, offset, aus, emotion)
    assert all(len(clips) == 3 for clips in names.values())


def test_load_synth_clip_re_renders_the_files(dataset):
    truth = json.loads((dataset / GROUND_TRUTH_FILE).read_text())
    record = truth["clips"][4]
    clip = load_synth_clip(dataset, f"sub{record['subject']:02d}", record["filename"])
    folder = dataset / "Cropped" / f"sub{record['subject']:02d}" / record["filename"]
    for number, frame in zip(clip.frame_numbers, clip.frames):
        assert np.array_equal(read_image(folder / f"reg_img{number}.jpg"), frame)
    assert clip.apex_frame == record["apex_frame"] and clip.aus == record["aus"]
    with pytest.raises(DatasetError):
        load_synth_clip(dataset, 1, "EP99_99")


def test_load_synth_clip_detects_tampered_files(dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    record = json.loads((copy / GROUND_TRUTH_FILE).read_text())["clips"][0]
    folder = copy / "Cropped" / "sub01" / record["filename"]
    victim = folder / f"reg_img{record['apex_frame']}.jpg"
    image = read_image(victim)
    image[10:20, 10:20] = 255 - image[10:20, 10:20]
    cv2.imwrite(str(victim), image)
    with pytest.raises(DatasetError, match="differs"):
        load_synth_clip(copy, 1, record["filename"])


def test_write_refuses_a_foreign_dataset_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "casme2"
    (foreign / "Cropped" / "sub01").mkdir(parents=True)
    with pytest.raises(DatasetError):
        write_synthme(foreign, subjects=1, clips_per_subject=1, **SMALL)
    out = write_synthme(tmp_path / "s", subjects=2, clips_per_subject=1, **SMALL)
    (out / "notes.txt").write_text("kept")
    write_synthme(out, subjects=1, clips_per_subject=1, **SMALL)
    assert [p.name for p in (out / "Cropped").iterdir()] == ["sub01"]
    assert (out / "notes.txt").read_text() == "kept"
