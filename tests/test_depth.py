"""Depth sources: recorded depth frames, SynthME ground truth, Depth Anything (optional)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from merkit.data.sample import FrameSource, Sample
from merkit.errors import DatasetError, PreprocessError, WeightsNotFoundError
from merkit.preprocess import depth


def test_normalise_depth_hand_case():
    raw = np.array([[[0, 1000], [1500, 2000]], [[1000, 1000], [2000, 0]]], dtype=np.uint16)
    near_small = depth.normalise_depth(raw, near="small", percentiles=(0, 100))
    np.testing.assert_allclose(near_small, [[[0, 1], [0.5, 0]], [[1, 1], [0, 0]]])
    near_large = depth.normalise_depth(raw, near="large", percentiles=(0, 100))
    np.testing.assert_allclose(near_large, [[[0, 0], [0.5, 1]], [[0, 0], [1, 0]]])
    per_frame = depth.normalise_depth(raw, near="small", percentiles=(0, 100), per="frame")
    np.testing.assert_allclose(per_frame[1], [[1, 1], [0, 0]])
    np.testing.assert_allclose(per_frame[0], [[0, 1], [0.5, 0]])
    assert near_small.dtype == np.float32
    clipped = depth.normalise_depth(np.arange(1, 101, dtype=float).reshape(1, 10, 10), near="large")
    assert clipped.min() == 0.0 and clipped.max() == 1.0 and (clipped == 1.0).sum() == 1  # 99th percentile = 99.01
    with pytest.raises(PreprocessError, match="no valid"):
        depth.normalise_depth(np.zeros((2, 3, 3)), near="small")


@pytest.fixture()
def depth_folder(tmp_path):
    """A CAS(ME)^3-like clip: color/ and depth/ (16-bit PNG distances in mm)."""
    color, depth_dir = tmp_path / "color", tmp_path / "depth"
    color.mkdir()
    depth_dir.mkdir()
    rng = np.random.default_rng(0)
    raw = rng.integers(600, 900, size=(4, 24, 32)).astype(np.uint16)
    raw[:, :2] = 0  # no measurement
    for number, frame in enumerate(raw, start=1):
        cv2.imwrite(str(depth_dir / f"{number}.png"), frame)
        cv2.imwrite(str(color / f"{number}.jpg"), np.full((24, 32, 3), 100, np.uint8))
    return tmp_path, raw


def test_read_depth_clip_keeps_16_bit(depth_folder):
    root, raw = depth_folder
    paths = sorted((root / "depth").glob("*.png"))
    np.testing.assert_array_equal(depth.read_depth_image(paths[0]), raw[0])
    clip = depth.read_depth_clip(paths)
    np.testing.assert_allclose(clip, depth.normalise_depth(raw, near="small"))
    assert clip[:, :2].max() == 0.0 and clip[:, 2:].max() == 1.0


def test_read_depth_image_grey_jpg_and_colour_map(tmp_path):
    grey = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (8, 1))
    cv2.imwrite(str(tmp_path / "grey.jpg"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert np.abs(depth.read_depth_image(tmp_path / "grey.jpg") - grey).max() <= 3
    cv2.imwrite(str(tmp_path / "jet.png"), cv2.applyColorMap(grey, cv2.COLORMAP_JET))
    with pytest.raises(PreprocessError, match="colour depth"):
        depth.read_depth_image(tmp_path / "jet.png")


def make_sample(frames: FrameSource, depth_frames: FrameSource | None, subject: str = "spNO.1", clip_id: str = "a",
                meta: dict | None = None) -> Sample:
    return Sample(dataset="casme3", subject=subject, clip_id=clip_id, frames=frames, onset_frame=frames.numbers[0],
                  apex_frame=None, offset_frame=frames.numbers[-1], emotion="happy", depth=depth_frames, meta=meta or {})


def test_depth_sequence_from_dataset(depth_folder):
    root, raw = depth_folder
    sample = make_sample(FrameSource.from_dir(root / "color"), FrameSource.from_dir(root / "depth", "*.png"))
    view = depth.depth_sequence(sample, [2, 3, 4], size=(12, 16))
    assert view.shape == (3, 1, 12, 16) and view.dtype == np.float32
    expected = depth.normalise_depth(raw[1:], near="small")
    np.testing.assert_allclose(view[:, 0], [cv2.resize(e, (16, 12), interpolation=cv2.INTER_AREA) for e in expected], atol=1e-6)
    # a transform moving the depth by (+2, +1) px on a same-size grid
    shift = np.broadcast_to(np.array([[1.0, 0, 2], [0, 1.0, 1]]), (3, 2, 3))
    moved = depth.depth_sequence(sample, [2, 3, 4], size=(24, 32), transforms=shift)
    np.testing.assert_allclose(moved[:, 0, 5:, 6:], expected[:, 4:-1, 4:-2], atol=1e-6)
    with pytest.raises(PreprocessError, match="casme3/spNO.1/a: no depth frames"):
        depth.depth_sequence(make_sample(sample.frames, None), [2], size=(8, 8))


@pytest.fixture(scope="module")
def synthme_root(tmp_path_factory):
    from merkit.data.synthetic import write_synthme

    return write_synthme(tmp_path_factory.mktemp("synthme"), subjects=1, clips_per_subject=1, size=64, fps=60.0, seed=2)


def test_synthme_depth_is_read_from_the_truth_file(synthme_root):
    from merkit.data.registry import load_dataset
    from merkit.data.synthetic import load_synth_clip

    sample = load_dataset("synthme", synthme_root).samples[0]
    clip = load_synth_clip(synthme_root, 1, sample.clip_id)
    raw = np.stack([clip.depth_at(t) for t in range(len(clip.frames))])
    truth = depth.synth_truth_of(sample)
    np.testing.assert_array_equal(truth.frame_numbers, clip.frame_numbers)
    assert np.abs(truth.depth - raw).max() <= 1 / 16383  # 14 bits (0.5 / 16383 where depth >= 1 / 16383)
    np.testing.assert_array_equal(truth.depth > 0, raw > 0)  # the background stays exactly the background
    stream = depth.normalise_depth(truth.depth, near="large")
    nose = np.round(clip.landmarks_at(0)[30]).astype(int)
    onset = stream[0]
    assert onset[0, 0] == 0.0  # background
    assert onset[nose[1], nose[0]] > 0.8 > onset[nose[1] - 10, nose[0] - 14]  # the nose tip is nearer than the cheek

    positions = [clip.onset, clip.apex]
    view = depth.depth_sequence(sample, clip.frame_numbers[positions], size=(32, 32), source="synthme")
    exact = [cv2.resize(s, (32, 32), interpolation=cv2.INTER_AREA) for s in depth.normalise_depth(raw[positions], near="large")]
    np.testing.assert_allclose(view[:, 0], exact, atol=2e-4)  # the view from the file = the re-rendered one
    with pytest.raises(DatasetError, match="holds frames"):
        depth.depth_sequence(sample, [clip.frame_numbers[-1] + 1], size=(32, 32), source="synthme")
    with pytest.raises(PreprocessError, match="needs a SynthME sample"):
        depth.depth_sequence(make_sample(sample.frames, None), clip.frame_numbers[positions], size=(32, 32), source="synthme")


def test_a_synthme_folder_without_truth_files_asks_to_regenerate_it(synthme_root, tmp_path):
    import re
    import shutil

    from typer.testing import CliRunner

    from merkit.cli import app
    from merkit.config import ViewsConfig
    from merkit.data.registry import load_dataset
    from merkit.preprocess.pipeline import build_views
    from merkit.views import ViewSpec

    old = tmp_path / "old"  # as written before the generator wrote synthme_truth.npz
    shutil.copytree(synthme_root, old)
    for file in old.rglob("synthme_truth.npz"):
        file.unlink()
    sample = load_dataset("synthme", old).samples[0]
    for spec, config in ((ViewSpec("depth_seq", (16, 16), length=3), ViewsConfig(depth="synthme")),
                         (ViewSpec("au", (0, 0), length=3), ViewsConfig(au="synthme"))):
        with pytest.raises(DatasetError, match=rf"{sample.clip_id}: no SynthME ground-truth file synthme_truth\.npz.*"
                                               rf"`merkit synth --out {re.escape(str(old))}`"):
            build_views(sample, [spec], config)
    result = CliRunner().invoke(app, ["preprocess", "--dataset", "synthme", "--root", str(old), "--views", "depth_seq",
                                      "--config", "madv-net-synthme", "--size", "16", "--cache", str(tmp_path / "cache")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "no SynthME ground-truth file" in result.output and "merkit synth" in result.output
    (old / "Cropped" / sample.subject / sample.clip_id / "synthme_truth.npz").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(DatasetError, match="unreadable SynthME ground truth"):
        build_views(sample, [ViewSpec("depth_seq", (16, 16), length=3)], ViewsConfig(depth="synthme"))


def test_depth_anything_without_weights_says_what_to_supply(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"Hugging Face format.*pip install merkit\[depth\]"):
        depth.DepthAnythingEstimator(tmp_path / "no-such-checkpoint")
    sample = make_sample(FrameSource((tmp_path / "1.jpg",), (1,)), None)
    with pytest.raises(WeightsNotFoundError, match="no config.json"):
        depth.depth_sequence(sample, [1], size=(8, 8), source=f"depth-anything:{tmp_path}", frames=np.zeros((1, 8, 8, 3), np.uint8))


@pytest.fixture(scope="module")
def tiny_depth_anything(tmp_path_factory):
    """A randomly initialised, tiny Depth Anything checkpoint in Hugging Face format: (its
    directory, the model, the processor)."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    backbone = transformers.Dinov2Config(
        image_size=28, patch_size=14, num_channels=3, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=16, out_indices=[1, 2], reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=8, patch_size=14, neck_hidden_sizes=[4, 4],
        fusion_hidden_size=6, head_hidden_size=4,
    )
    model = transformers.DepthAnythingForDepthEstimation(config).eval()
    folder = tmp_path_factory.mktemp("depth-anything")
    model.save_pretrained(folder)
    processor = transformers.DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=False, ensure_multiple_of=14)
    processor.save_pretrained(folder)
    return folder, model, processor


def test_depth_anything_tiny_random_model(tiny_depth_anything):
    import torch

    tmp_path, model, processor = tiny_depth_anything
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 30, 40, 3), dtype=np.uint8)
    estimator = depth.DepthAnythingEstimator(tmp_path, batch_size=2)
    raw = estimator.predict_raw(frames)
    assert raw.shape == (3, 30, 40) and np.isfinite(raw).all()
    with torch.no_grad():
        direct = model(**processor(images=list(frames[:1]), return_tensors="pt")).predicted_depth
    expected = torch.nn.functional.interpolate(direct[:, None], size=(30, 40), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(raw[0], expected.numpy(), rtol=1e-4, atol=1e-5)
    normalised = estimator.predict(frames)
    assert normalised.min() >= 0.0 and normalised.max() == pytest.approx(1.0)


def test_depth_anything_through_build_views(tiny_depth_anything, synth_samples, monkeypatch):
    """The pipeline's depth_seq view from Depth Anything: the estimator runs on the sampled course
    frames (here SynthME's RGB frames), one normalisation per clip, resized to the view. Plain
    'depth-anything' (MADV-Net's paper config) reads the checkpoint from $MERKIT_DEPTH_ANYTHING."""
    from merkit.config import ViewsConfig, load_config
    from merkit.errors import PreprocessError
    from merkit.preprocess.pipeline import ViewBuilder, build_views, cache_key, load_course, sample_positions
    from merkit.views import ViewSpec

    folder = tiny_depth_anything[0]
    sample = synth_samples[1]
    specs = [ViewSpec("frames", (20, 20), channels=3, length=4), ViewSpec("depth_seq", (20, 20), length=4)]
    explicit = ViewsConfig(depth=f"depth-anything:{folder}")
    views = build_views(sample, specs, explicit)
    assert views["depth_seq"].shape == (4, 1, 20, 20) and views["depth_seq"].dtype == np.float32
    course = load_course(sample, explicit)
    positions, _ = sample_positions(course, 4, explicit, sample.fps)
    estimated = depth.DepthAnythingEstimator(folder).predict(course.frames[positions])
    expected = [cv2.resize(d, (20, 20), interpolation=cv2.INTER_AREA) for d in estimated]
    np.testing.assert_allclose(views["depth_seq"][:, 0], expected, atol=1e-5)

    paper = load_config("madv-net-paper").views
    assert paper.depth == "depth-anything"
    monkeypatch.setenv("MERKIT_DEPTH_ANYTHING", str(folder))
    from_env = build_views(sample, specs, ViewsConfig(depth="depth-anything"))
    np.testing.assert_array_equal(from_env["depth_seq"], views["depth_seq"])
    assert cache_key(sample, specs, ViewsConfig(depth="depth-anything")) == cache_key(sample, specs, explicit)
    monkeypatch.delenv("MERKIT_DEPTH_ANYTHING")
    with pytest.raises(WeightsNotFoundError, match="MERKIT_DEPTH_ANYTHING.*downloads nothing"):
        build_views(sample, specs, ViewsConfig(depth="depth-anything"))
    with pytest.raises(PreprocessError, match="MERKIT_DEPTH_ANYTHING"):
        ViewBuilder(specs, ViewsConfig(depth="depth-anything")).build([sample])
