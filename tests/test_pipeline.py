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
    assert (paper.face, paper.sampling, paper.flow, paper.magnify) == ("dlib", "keyframes", "tvl1", 10.0)
    spec = [ViewSpec("flow_seq", (48, 48), channels=3, length=6)]
    magnified = build_views(sample, spec, paper)
    plain = build_views(sample, spec, paper.model_copy(update={"magnify": None}))
    flow = magnified["flow_seq"]
    assert flow.shape == (6, 3, 48, 48) and np.all(flow[0] == 0)
    apex = int(magnified["apex_index"])
    speed = np.hypot(flow[apex, 0], flow[apex, 1])
    assert speed[30:, :].mean() > 3 * speed[:18, :].mean()  # the mouth moves, the brow does not
    plain_speed = np.hypot(plain["flow_seq"][apex, 0], plain["flow_seq"][apex, 1])
    moving = plain_speed > 0.1  # the smiling mouth
    assert moving[:18].sum() == 0 and moving.sum() > 10
    assert speed[moving].mean() > 2 * plain_speed[moving].mean()  # magnification amplifies it


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
