from pathlib import Path

import numpy as np
import pytest

from merkit.config import ViewsConfig
from merkit.data.synthetic import load_synth_clip
from merkit.errors import PreprocessError
from merkit.preprocess.pipeline import ViewBuilder, build_views, cache_key, load_course
from merkit.views import ViewSpec


def _clip(sample):
    root, subject, filename = sample.meta["synthme"]
    return load_synth_clip(root, subject, filename, verify=False)


def test_course_starts_at_onset_and_finds_the_annotated_apex(synth_samples):
    sample = synth_samples[0]
    course = load_course(sample, ViewsConfig())
    clip = _clip(sample)
    assert course.numbers[0] == sample.onset_frame and course.numbers[-1] == sample.offset_frame
    assert course.numbers[course.apex] == sample.apex_frame
    np.testing.assert_array_equal(course.frames[0], clip.frames[clip.onset])
    np.testing.assert_array_equal(course.frames[course.apex], clip.frames[clip.apex])
    assert course.apex_source == "annotated"


def test_diff_view_is_apex_minus_onset_at_the_requested_size(synth_samples):
    sample = synth_samples[1]
    views = build_views(sample, [ViewSpec("onset", (32, 32)), ViewSpec("apex", (32, 32)), ViewSpec("diff", (32, 32))], ViewsConfig())
    assert views["diff"].shape == (1, 32, 32) and views["diff"].dtype == np.float32
    np.testing.assert_allclose(views["diff"], views["apex"] - views["onset"], atol=1e-6)
    assert np.abs(views["diff"]).max() > 0.02  # the expression moved something


def test_flow_view_points_the_way_the_true_displacement_does(synth_samples):
    sample = synth_samples[2]
    clip = _clip(sample)
    views = build_views(sample, [ViewSpec("flow", (64, 64))], ViewsConfig(flow="farneback"))
    true = clip.flow_at(clip.apex)
    moving = np.linalg.norm(true, axis=-1) > 0.5
    assert moving.sum() > 20
    est = views["flow"][:2].transpose(1, 2, 0)[moving]
    cosine = (est * true[moving]).sum(-1) / (np.linalg.norm(est, axis=-1) * np.linalg.norm(true[moving], axis=-1) + 1e-6)
    assert np.median(cosine) > 0.5


def test_sequence_views_start_at_onset_and_contain_the_apex(synth_samples):
    sample = synth_samples[3]
    views = build_views(sample, [ViewSpec("frames", (24, 24), length=6)], ViewsConfig())
    assert views["frames"].shape == (6, 1, 24, 24)
    onset = build_views(sample, [ViewSpec("onset", (24, 24))], ViewsConfig())["onset"]
    apex = build_views(sample, [ViewSpec("apex", (24, 24))], ViewsConfig())["apex"]
    np.testing.assert_allclose(views["frames"][0], onset)
    np.testing.assert_allclose(views["frames"][int(views["apex_index"])], apex)


def test_missing_apex_follows_the_policy(synth_samples):
    from dataclasses import replace

    sample = replace(synth_samples[0], apex_frame=None)
    with pytest.raises(PreprocessError, match="no annotated apex"):
        load_course(sample, ViewsConfig(apex_policy="annotated"))
    course = load_course(sample, ViewsConfig(apex_policy="middle"))
    assert course.apex == (len(course.frames) - 1) // 2 and course.apex_source == "middle"


def test_cache_reuses_views_and_recomputes_when_the_config_changes(synth_samples, tmp_path):
    specs = [ViewSpec("diff", (16, 16))]
    samples = synth_samples[:3]
    first_samples, first = ViewBuilder(specs, ViewsConfig(), cache_dir=tmp_path).build(samples)
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 3 and not list(tmp_path.glob("*.tmp*"))
    _, again = ViewBuilder(specs, ViewsConfig(), cache_dir=tmp_path).build(samples)
    np.testing.assert_array_equal(first["diff"], again["diff"])
    assert sorted(tmp_path.glob("*.npz")) == files  # nothing new written
    assert cache_key(samples[0], specs, ViewsConfig()) != cache_key(samples[0], specs, ViewsConfig(apex_policy="middle"))
    ViewBuilder(specs, ViewsConfig(apex_policy="middle"), cache_dir=tmp_path).build(samples)
    assert len(list(tmp_path.glob("*.npz"))) == 6


def test_damaged_cache_entry_is_rebuilt(synth_samples, tmp_path):
    specs = [ViewSpec("diff", (16, 16))]
    _, first = ViewBuilder(specs, ViewsConfig(), cache_dir=tmp_path).build(synth_samples[:1])
    entry = next(tmp_path.glob("*.npz"))
    entry.write_bytes(b"not an npz")
    _, again = ViewBuilder(specs, ViewsConfig(), cache_dir=tmp_path).build(synth_samples[:1])
    np.testing.assert_array_equal(first["diff"], again["diff"])


def test_skip_records_the_failing_sample(synth_samples):
    from dataclasses import replace

    bad = replace(synth_samples[0], apex_frame=None)
    builder = ViewBuilder([ViewSpec("diff", (16, 16))], ViewsConfig(apex_policy="annotated"), on_error="skip")
    kept, views = builder.build([bad, synth_samples[1]])
    assert kept == [synth_samples[1]] and views["diff"].shape[0] == 1
    assert bad.sample_id in builder.skipped[0]
    with pytest.raises(PreprocessError, match=bad.sample_id):
        ViewBuilder([ViewSpec("diff", (16, 16))], ViewsConfig(apex_policy="annotated")).build([bad])


def test_two_workers_give_the_same_views(synth_samples):
    specs = [ViewSpec("diff", (16, 16))]
    _, one = ViewBuilder(specs, ViewsConfig(), workers=1).build(synth_samples[:4])
    _, two = ViewBuilder(specs, ViewsConfig(), workers=2).build(synth_samples[:4])
    np.testing.assert_array_equal(one["diff"], two["diff"])


def test_synthme_samples_carry_the_generated_frame_rate(synth_samples):
    assert {s.fps for s in synth_samples} == {100.0}
    assert {s.dataset for s in synth_samples} == {"synthme"}


def test_synthme_views_from_the_truth_files_equal_those_of_the_re_rendered_clips(synth_samples, monkeypatch):
    """The depth and AU views read from synthme_truth.npz = those from load_synth_clip's exact
    depth and landmarks (14-bit depth: 2e-4 after normalisation; float32 landmarks: 1e-5)."""
    from merkit.data.synthme.truth import SynthTruth
    from merkit.preprocess import depth

    specs = [ViewSpec("depth_seq", (32, 32), length=6), ViewSpec("au", (0, 0), length=6)]
    config = ViewsConfig(depth="synthme", au="synthme")
    for sample in synth_samples[:3]:
        clip = _clip(sample)
        exact = SynthTruth(path=Path("re-rendered"), frame_numbers=clip.frame_numbers,
                           landmarks=np.stack([clip.landmarks_at(t) for t in range(len(clip))]),
                           depth=np.stack([clip.depth_at(t) for t in range(len(clip))]))
        from_files = build_views(sample, specs, config)
        with monkeypatch.context() as patch:
            patch.setattr(depth, "read_truth", lambda path: exact)
            re_rendered = build_views(sample, specs, config)
        assert np.abs(from_files["depth_seq"] - re_rendered["depth_seq"]).max() <= 2e-4
        np.testing.assert_allclose(from_files["au"], re_rendered["au"], atol=1e-5)
        assert np.abs(re_rendered["au"]).max() > 0.01 and re_rendered["depth_seq"].max() > 0.9  # not empty views


def test_single_map_views_read_only_onset_and_apex(synth_samples):
    sample = synth_samples[0]
    light = load_course(sample, ViewsConfig(), full=False)
    full = load_course(sample, ViewsConfig())
    assert len(light.frames) == 2 and light.numbers.tolist() == [sample.onset_frame, sample.apex_frame]
    np.testing.assert_array_equal(light.frames[light.apex], full.frames[full.apex])
    middle = load_course(sample, ViewsConfig(apex_policy="middle"), full=False)
    assert middle.numbers[middle.apex] == full.numbers[(len(full.frames) - 1) // 2]


def test_depth_follows_the_face_alignment(tmp_path):
    """Depth recorded at half the colour resolution, whose values are the colour frames'
    brightness: after the face step (similarity crop of a moved head) the depth_seq view must
    line up with the aligned frames view pixel for pixel, as the texture does."""
    import cv2

    from faces import animated_astronaut
    from merkit.data.sample import FrameSource, Sample

    face = animated_astronaut({"12": 1.0}, [(6.0, -4.0, 8.0)] * 5, n_frames=5)  # head turned and moved
    color, depth_dir = tmp_path / "color", tmp_path / "depth"
    color.mkdir(), depth_dir.mkdir()
    for number, frame in enumerate(face.frames, start=1):
        cv2.imwrite(str(color / f"{number}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        half = cv2.resize(grey, (96, 96), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(depth_dir / f"{number}.png"), (1000 + 10 * half).astype(np.uint16))  # far = bright
    sample = Sample(dataset="casme3", subject="spNO.1", clip_id="a", frames=FrameSource.from_dir(color, "*.png"),
                    onset_frame=1, apex_frame=3, offset_frame=5, emotion="happy",
                    depth=FrameSource.from_dir(depth_dir, "*.png"))
    specs = [ViewSpec("frames", (48, 48), channels=1, length=5), ViewSpec("depth_seq", (48, 48), channels=1, length=5)]

    def correlation(config):
        views = build_views(sample, specs, config)
        texture, depth = views["frames"][:, 0], views["depth_seq"][:, 0]
        inner = (slice(None), slice(4, -4), slice(4, -4))
        return np.corrcoef(texture[inner].ravel(), depth[inner].ravel())[0, 1]

    aligned = correlation(ViewsConfig(face="dlib", depth="dataset"))
    assert aligned < -0.95  # near = small distance = dark here: registered, inverted
    # the same depth only resized, as before the face step passed its transforms on
    course = load_course(sample, ViewsConfig(face="dlib"))
    assert course.transforms.shape == (5, 2, 3) and course.source_size == (192, 192)
    unaligned = np.corrcoef(cv2.resize(cv2.cvtColor(course.frames[0], cv2.COLOR_RGB2GRAY), (48, 48)).ravel(),
                            cv2.resize(cv2.cvtColor(face.frames[0], cv2.COLOR_RGB2GRAY), (48, 48)).ravel())[0, 1]
    assert abs(unaligned) < 0.8  # the crop really moved the face: registration is not trivial


def test_dlib_box_face_step_crops_the_landmark_box_without_rotation(tmp_path):
    """views.face: dlib-box (paper 004) is crop_box_clip on dlib's 68 landmarks: an axis-aligned
    square around them, the same for every frame; a tilted head stays tilted (alignment would
    level it)."""
    import cv2

    from faces import animated_astronaut
    from merkit.data.sample import FrameSource, Sample
    from merkit.preprocess.face import crop_box_clip, track_landmarks

    face = animated_astronaut(None, [(4.0, -3.0, 12.0)] * 3, n_frames=3)
    for number, frame in enumerate(face.frames, start=1):
        cv2.imwrite(str(tmp_path / f"{number}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    sample = Sample(dataset="casme2", subject="01", clip_id="tilted", frames=FrameSource.from_dir(tmp_path, "*.png"),
                    onset_frame=1, apex_frame=2, offset_frame=3, emotion="others", fps=30.0)
    course = load_course(sample, ViewsConfig(face="dlib-box"))
    expected = crop_box_clip(face.frames, detector="dlib", box_from="landmarks")
    np.testing.assert_array_equal(course.frames, expected.frames)
    np.testing.assert_allclose(course.transforms, expected.transforms)
    linear = course.transforms[0, :, :2]
    assert linear[0, 1] == 0 and linear[1, 0] == 0 and linear[0, 0] == pytest.approx(linear[1, 1])  # no rotation
    landmarks = track_landmarks(face.frames[:1])[0]
    box = np.c_[landmarks, np.ones(68)] @ course.transforms[0].T  # the 68 points fill the square
    assert box.min() > -2 and box.max() < 226 and np.ptp(box, axis=0).max() > 220
    aligned = load_course(sample, ViewsConfig(face="dlib"))

    def eye_tilt(points):  # degrees of the line between the two eye centres
        right, left = points[36:42].mean(0), points[42:48].mean(0)
        return np.degrees(np.arctan2(left[1] - right[1], left[0] - right[0]))

    assert abs(eye_tilt(np.c_[landmarks, np.ones(68)] @ aligned.transforms[0].T)) < 2  # alignment levels the eyes
    assert abs(eye_tilt(box) - eye_tilt(landmarks)) < 0.5 and abs(eye_tilt(box)) > 8  # the box crop does not


def test_paper_004_view_chain_runs_end_to_end(tmp_path):
    """ms3d-resnet-paper's views section (dlib crop, spatio-temporal-slice key frames, Eulerian
    magnification, TV-L1 onset -> frame flow) on a real face that smiles (AU12), at a small
    size: flow where the smile is, amplified by the magnification, nothing at the onset. The
    12 frames are played at 30 fps (0.4 s, a micro-expression's length), so the smile's
    frequencies lie in the magnification's 0.4-15 Hz band."""
    import cv2

    from faces import animated_astronaut
    from merkit.config import load_config
    from merkit.data.sample import FrameSource, Sample

    face = animated_astronaut({"12": 1.0}, None, n_frames=12)
    for number, frame in enumerate(face.frames, start=1):
        cv2.imwrite(str(tmp_path / f"{number}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    sample = Sample(dataset="casme2", subject="01", clip_id="smile", frames=FrameSource.from_dir(tmp_path, "*.png"),
                    onset_frame=1, apex_frame=6, offset_frame=12, emotion="happiness", fps=30.0)
    paper = load_config("ms3d-resnet-paper").views
    assert (paper.face, paper.sampling, paper.flow, paper.magnify) == ("dlib-box", "keyframes", "tvl1", 10.0)
    spec = [ViewSpec("flow_seq", (48, 48), channels=3, length=6)]
    magnified = build_views(sample, spec, paper)
    plain = build_views(sample, spec, paper.model_copy(update={"magnify": None}))
    flow = magnified["flow_seq"]
    assert flow.shape == (6, 3, 48, 48) and np.all(flow[0] == 0)
    apex = int(magnified["apex_index"])
    speed = np.hypot(flow[apex, 0], flow[apex, 1])
    # the landmark box runs from the brows (row 0) to the chin (row 47): eyes near row 10, mouth rows 20-32
    assert speed[20:34, :].mean() > 3 * speed[:12, :].mean()  # the mouth moves, brows and eyes do not
    plain_speed = np.hypot(plain["flow_seq"][apex, 0], plain["flow_seq"][apex, 1])
    moving = plain_speed > 0.1  # the smiling mouth
    assert moving[:12].sum() == 0 and moving.sum() > 10
    assert speed[moving].mean() > 2 * plain_speed[moving].mean()  # magnification amplifies it


def test_magnification_runs_on_the_even_course_before_key_frames_are_picked(synth_samples):
    """Key frames are unevenly spaced in time; the Eulerian filter must see the evenly spaced
    course at the clip's frame rate, and the picked frames are then read from the magnified
    course (not the picked frames magnified as if they were evenly spaced)."""
    from merkit.preprocess.flow import flow_sequence
    from merkit.preprocess.magnify import magnify
    from merkit.preprocess.pipeline import _grey, sample_positions

    sample = synth_samples[0]
    config = ViewsConfig(sampling="keyframes", magnify=10.0, flow="dis")
    spec = ViewSpec("flow_seq", (32, 32), channels=3, length=5)
    course = load_course(sample, config)
    positions, _ = sample_positions(course, 5, config, sample.fps)
    assert len(set(np.diff(positions))) > 1  # unevenly spaced: the case that matters
    grey = np.stack([_grey(f) for f in course.frames])
    first = flow_sequence(magnify(grey, fps=sample.fps, alpha=10.0)[positions], onset_index=0, method="dis", size=(32, 32))
    picked_fps = sample.fps * 4 / (positions[-1] - positions[0])
    later = flow_sequence(magnify(grey[positions], fps=picked_fps, alpha=10.0), onset_index=0, method="dis", size=(32, 32))
    built = build_views(sample, [spec], config)["flow_seq"]
    np.testing.assert_allclose(built, first, atol=1e-5)
    assert np.abs(built - later).max() > 0.05


def test_interpolate_sampling_resamples_the_whole_course(synth_samples):
    from merkit.preprocess.pipeline import to_image_view
    from merkit.preprocess.sampling import interpolate_frames

    sample = synth_samples[3]
    course = load_course(sample, ViewsConfig())
    views = build_views(sample, [ViewSpec("frames", (24, 24), length=5)], ViewsConfig(sampling="interpolate"))
    every_frame = np.stack([to_image_view(f, (24, 24), 1) for f in course.frames])
    np.testing.assert_allclose(views["frames"], interpolate_frames(every_frame, 5), atol=1.5 / 255)
    uniform = build_views(sample, [ViewSpec("frames", (24, 24), length=5)], ViewsConfig())
    assert np.abs(views["frames"] - uniform["frames"]).max() > 0.01  # not the uniform picks
    assert int(views["apex_index"]) == round(course.apex * 4 / (len(course.frames) - 1))
    with pytest.raises(PreprocessError, match="interpolate"):
        build_views(sample, [ViewSpec("au", (0, 0), length=5)], ViewsConfig(sampling="interpolate", au="synthme"))


def test_sampling_all_keeps_every_frame_at_the_view_rate_padded_and_masked(synth_samples):
    from merkit.preprocess.pipeline import to_image_view
    from merkit.preprocess.sampling import resample_rate

    sample = synth_samples[3]  # 100 fps
    course = load_course(sample, ViewsConfig())
    kept = resample_rate(len(course.frames), 100, 30)  # every frame of the clip at 30 Hz
    count = len(kept)
    views = build_views(sample, [ViewSpec("frames", (24, 24), length=count + 3)], ViewsConfig(sampling="all", fps=30))
    assert views["frames"].shape == (count + 3, 1, 24, 24)
    np.testing.assert_array_equal(views["frames_mask"], np.arange(count + 3) < count)
    assert (views["frames"][count:] == 0).all() and (views["frames_position"][count:] == 0).all()
    apex = int(views["apex_index"])
    np.testing.assert_allclose(views["frames"][apex], to_image_view(course.frames[course.apex], (24, 24), 1))
    others = [k for k in range(count) if k != apex]
    np.testing.assert_array_equal(views["frames_position"][others], np.array(others, dtype=np.float32))  # frames at 30 Hz
    for k in others:
        np.testing.assert_allclose(views["frames"][k], to_image_view(course.frames[kept[k]], (24, 24), 1))
    assert views["frames_position"][apex] == pytest.approx(course.apex * 0.3, abs=1e-5)  # its own time


def test_sampling_all_thins_a_clip_longer_than_the_view_at_true_frame_distances(synth_samples):
    sample = synth_samples[3]
    course = load_course(sample, ViewsConfig())
    views = build_views(sample, [ViewSpec("frames", (16, 16), length=4)], ViewsConfig(sampling="all"))
    assert views["frames_mask"].all()
    positions = views["frames_position"]
    assert positions[0] == 0 and positions[-1] == len(course.frames) - 1  # native frames, first and last kept
    assert np.all(np.diff(positions) > 1)


def test_fixed_slot_sampling_records_the_frames_it_picked(synth_samples):
    from merkit.preprocess.sampling import uniform_indices

    sample = synth_samples[0]
    course = load_course(sample, ViewsConfig())
    views = build_views(sample, [ViewSpec("frames", (16, 16), length=5)], ViewsConfig(apex_policy="middle"))
    assert views["frames_mask"].all()
    expected = uniform_indices(len(course.frames), 5).astype(np.float32)
    if course.apex not in expected:  # the slot nearest the apex holds the apex
        expected[np.argmin(np.abs(expected[1:] - course.apex)) + 1] = course.apex
    np.testing.assert_array_equal(views["frames_position"], np.sort(expected))


def test_sampling_all_needs_two_frames_and_a_model_that_reads_the_mask(synth_samples):
    from dataclasses import replace

    from merkit.config import load_config
    from merkit.errors import ConfigError
    from merkit.models import create
    from merkit.train.loso import check_views_config

    one_frame = replace(synth_samples[0], offset_frame=synth_samples[0].onset_frame, apex_frame=synth_samples[0].onset_frame)
    with pytest.raises(PreprocessError, match="at least two frames"):
        build_views(one_frame, [ViewSpec("frames", (16, 16), length=4)], ViewsConfig(sampling="all"))
    config = load_config("madv-net-cpu", {"views": {"sampling": "all"}})
    model = create(config.model_name, num_classes=5, **config.model_kwargs)
    with pytest.raises(ConfigError, match="padding mask"):
        check_views_config(model.input_spec, config, model)
    atm = load_config("atm-gcn-cpu", {"views": {"sampling": "all"}})
    atm_model = create(atm.model_name, num_classes=5, **atm.model_kwargs)
    check_views_config(atm_model.input_spec, atm, atm_model)  # ATM-GCN reads the mask: accepted


def test_a_truncated_jpeg_is_refused_naming_the_file(tmp_path):
    """libjpeg decodes a JPEG cut in half as a half-grey image without an error."""
    import cv2

    from merkit.data.sample import read_image
    from merkit.errors import MissingFramesError

    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    whole, padded, cut = tmp_path / "whole.jpg", tmp_path / "padded.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(data)
    padded.write_bytes(data + b"\x00" * 16)  # padding after the end-of-image marker is harmless
    cut.write_bytes(data[: len(data) // 2])
    assert read_image(whole).shape == (32, 32, 3)
    np.testing.assert_array_equal(read_image(padded), read_image(whole))
    with pytest.raises(MissingFramesError, match="cut.jpg: truncated JPEG"):
        read_image(cut)
    with pytest.raises(MissingFramesError, match="absent.jpg: missing"):
        read_image(tmp_path / "absent.jpg")
