"""Temporal sampling: hand-checked positions, exact interpolation, spatio-temporal-slice key frames."""

from __future__ import annotations

import numpy as np
import pytest

from merkit.errors import ConfigError, PreprocessError
from merkit.preprocess.sampling import (
    interpolate_frames,
    keyframes_sts,
    resample_rate,
    slice_mismatch,
    spatio_temporal_slices,
    uniform_indices,
)


def test_uniform_indices_hand_checked():
    # i * (n - 1) / (length - 1), rounded half up
    np.testing.assert_array_equal(uniform_indices(5, 8), [0, 1, 1, 2, 2, 3, 3, 4])  # repeats when n < length
    np.testing.assert_array_equal(
        uniform_indices(100, 16), [0, 7, 13, 20, 26, 33, 40, 46, 53, 59, 66, 73, 79, 86, 92, 99]
    )
    np.testing.assert_array_equal(uniform_indices(9, 5), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(uniform_indices(4, 3), [0, 2, 3])  # 1.5 rounds up, not to even
    np.testing.assert_array_equal(uniform_indices(10, 1), [4])
    np.testing.assert_array_equal(uniform_indices(1, 3), [0, 0, 0])
    with pytest.raises(ConfigError):
        uniform_indices(0, 3)


def test_resample_rate_hand_checked():
    # 100 frames at 200 Hz last 99 / 200 s; at 30 Hz that is floor(99 * 0.15) + 1 = 15 frames,
    # frame k nearest to k * 200 / 30 = 6.67 k
    np.testing.assert_array_equal(
        resample_rate(100, 200, 30), [0, 7, 13, 20, 27, 33, 40, 47, 53, 60, 67, 73, 80, 87, 93]
    )
    np.testing.assert_array_equal(resample_rate(61, 200, 30), [0, 7, 13, 20, 27, 33, 40, 47, 53, 60])
    np.testing.assert_array_equal(resample_rate(6, 5, 2), [0, 3, 5])  # 2.5 rounds up
    np.testing.assert_array_equal(resample_rate(10, 30, 30), np.arange(10))
    np.testing.assert_array_equal(resample_rate(5, 10, 20), [0, 1, 1, 2, 2, 3, 3, 4, 4])  # upsampling repeats
    np.testing.assert_array_equal(resample_rate(1, 200, 30), [0])
    with pytest.raises(ConfigError):
        resample_rate(10, 0, 30)


def test_interpolate_frames_exact_on_linear_ramp():
    times = np.arange(4, dtype=np.float32)
    base, slope = np.random.default_rng(0).random((2, 5, 6, 3)).astype(np.float32)
    ramp = base + slope * times[:, None, None, None]
    out = interpolate_frames(ramp, 7)
    assert out.shape == (7, 5, 6, 3) and out.dtype == np.float32
    expected = base + slope * (np.arange(7) * 3 / 6)[:, None, None, None]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(interpolate_frames(ramp, 2), ramp[[0, -1]], atol=1e-6)
    # downsampling 5 -> 3 keeps frames 0, 2, 4; a uint8 ramp stays exact in float
    ramp8 = (np.arange(5, dtype=np.uint8) * 10)[:, None].repeat(4, 1)
    np.testing.assert_allclose(interpolate_frames(ramp8, 3), [[0] * 4, [20] * 4, [40] * 4])
    np.testing.assert_allclose(interpolate_frames(ramp8, 9)[:, 0], np.arange(9) * 5.0)
    np.testing.assert_allclose(interpolate_frames(ramp8[:1], 3)[:, 0], [0, 0, 0])
    np.testing.assert_allclose(interpolate_frames(ramp8, 1)[:, 0], [20])
    with pytest.raises(PreprocessError):
        interpolate_frames(np.zeros((0, 3)), 4)


def moving_texture_clip(shifts: np.ndarray, h: int = 40, w: int = 48) -> np.ndarray:
    """(T, H, W) float32: a texture moved horizontally by shifts[t] pixels, no noise."""
    rng = np.random.default_rng(3)
    waves = list(zip(rng.uniform(0.2, 0.6, 12), rng.uniform(0, 6.3, 12), rng.uniform(-1, 1, 12)))
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = [0.5 + 0.04 * sum(np.cos(k * ((x - shift) + slope * y) + phase) for k, phase, slope in waves) for shift in shifts]
    return np.stack(frames).astype(np.float32)


def test_spatio_temporal_slices_and_mismatch_hand_computed():
    frames = np.arange(2 * 8 * 6, dtype=np.float32).reshape(2, 8, 6)
    slices = spatio_temporal_slices(frames, rows=3)  # rows 0, 4 (3.5 rounds up), 7
    assert slices.shape == (2, 3, 6)
    np.testing.assert_array_equal(slices, frames[:, [0, 4, 7]])
    rgb = np.stack([frames, frames + 3, frames + 6], axis=-1)
    np.testing.assert_allclose(spatio_temporal_slices(rgb, rows=None), frames + 3)
    # a ramp slice moved by one pixel: plain mismatch 1; nearest-pixel matching within 1 column
    # finds every pixel but the last one (6 vs 5) -> 1 / 6
    reference = np.arange(6, dtype=np.float32)[None]
    moved = (np.arange(6, dtype=np.float32) + 1)[None, None]
    assert slice_mismatch(moved, reference, search=0)[0] == pytest.approx(1.0)
    assert slice_mismatch(moved, reference, search=1)[0] == pytest.approx(1 / 6)
    assert slice_mismatch(moved + 2, reference, search=1)[0] == pytest.approx((4 + 4 + 4 + 4 + 4 + 9) / 6)


# still for frames 0..9, moving for 10..19, still for 20..39
MOTION = np.r_[np.zeros(10), np.linspace(0, 2.0, 11)[1:], np.full(20, 2.0)]


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_keyframes_follow_the_motion(noise):
    clip = moving_texture_clip(MOTION)
    clip = clip + np.random.default_rng(1).normal(0, noise, clip.shape).astype(np.float32)
    keys = keyframes_sts(clip, num=8)
    assert len(keys) == 8 and np.all(np.diff(keys) > 0)
    assert keys[0] == 0 and keys[-1] == 39
    # the moving quarter of the clip gets (almost) all interior key frames; uniform sampling gives it 1-2
    in_motion = (keys[1:-1] >= 10) & (keys[1:-1] <= 20)
    assert in_motion.sum() >= 5, keys
    # RGB works the same
    np.testing.assert_array_equal(keyframes_sts(np.repeat(clip[..., None], 3, axis=3), num=8), keys)
    # the threshold rule: key frames only where the slices changed (plus first and last)
    keys = keyframes_sts(clip, num=None)
    assert keys[0] == 0 and keys[-1] == 39 and len(keys) >= 4
    assert np.all((keys[1:-1] >= 10) & (keys[1:-1] <= 21)), keys


def test_keyframes_fallbacks():
    still = np.zeros((6, 10, 12), np.float32)
    np.testing.assert_array_equal(keyframes_sts(still, num=4), uniform_indices(6, 4))
    np.testing.assert_array_equal(keyframes_sts(still[:3], num=5), [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(keyframes_sts(still[:1], num=3), [0, 0, 0])
    noise = np.random.default_rng(0).random((30, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(keyframes_sts(noise, num=None), [0, 29])  # noise is not motion
    np.testing.assert_array_equal(keyframes_sts(noise, num=5), uniform_indices(30, 5))
    with pytest.raises(ConfigError):
        keyframes_sts(noise, num=0)


def test_keyframes_cover_a_synthme_expression():
    """16 key frames of whole SynthME clips (neutral lead-in and lead-out included) land near the
    onset, the apex and the offset, and none is spent on the still lead-in."""
    from merkit.data.synthetic import SynthConfig, generate_clip

    for index in range(4):
        clip = generate_clip(SynthConfig.from_preset("default", size=64), 1 + index, index, seed=7)
        keys = keyframes_sts(clip.frames, num=16)
        assert len(keys) == 16 and np.all(np.diff(keys) > 0)
        tolerance = max(3, int(0.1 * len(clip.frames)))
        for event in (clip.onset, clip.apex, clip.offset):
            assert np.abs(keys - event).min() <= tolerance, (index, keys, clip.onset, clip.apex, clip.offset)
        assert np.count_nonzero((keys > 0) & (keys < clip.onset - 1)) <= 1, (keys, clip.onset)
        # on the onset..offset course (what the view pipeline samples) a key frame lies near the apex
        course = keyframes_sts(clip.frames[clip.onset : clip.offset + 1], num=16)
        course_length = clip.offset - clip.onset + 1
        assert np.abs(course - (clip.apex - clip.onset)).min() <= max(3, int(0.1 * course_length)), course
