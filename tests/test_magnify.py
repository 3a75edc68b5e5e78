"""Eulerian magnification: exact pyramids at every size, (1 + alpha) x motion, filters, cut-off."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from merkit.errors import ConfigError, PreprocessError
from merkit.preprocess.magnify import (
    laplacian_pyramid,
    level_alphas,
    magnify,
    max_levels,
    reconstruct,
    temporal_filter,
)

SIZES = [(60, 60), (97, 83), (128, 128)]


def smooth_texture(x: np.ndarray, y: np.ndarray, seed: int = 0, shortest: float = 12.0) -> np.ndarray:
    """Analytic texture in [0.1, 0.9]: sinusoids of wavelength shortest..40 px (Taylor-friendly)."""
    rng = np.random.default_rng(seed)
    value = np.zeros_like(x)
    for _ in range(24):
        angle, k = rng.uniform(0, np.pi), 2 * np.pi / rng.uniform(shortest, 40)
        value += np.cos(k * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 2 * np.pi))
    return (0.5 + 0.4 * value / np.abs(value).max()).astype(np.float32)


def translated_clip(h: int, w: int, shifts: list[tuple[float, float]], shortest: float = 12.0) -> np.ndarray:
    """(T, H, W) float32: frame t is the texture moved by shifts[t] = (dx, dy) pixels."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([smooth_texture(x - dx, y - dy, shortest=shortest) for dx, dy in shifts])


def measured_shift(reference: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Global sub-pixel translation (dx, dy) with moved(x + d) ~ reference(x), by ECC."""
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
    _, warp = cv2.findTransformECC(reference.astype(np.float32), moved.astype(np.float32), warp, cv2.MOTION_TRANSLATION, criteria, None, 1)
    return warp[:, 2].astype(np.float64)


@pytest.mark.parametrize("size", SIZES + [(5, 7), (33, 17)])
def test_pyramid_reconstruction_exact_at_every_size(size):
    rng = np.random.default_rng(1)
    h, w = size
    for image in (rng.random((h, w), dtype=np.float32), rng.random((h, w, 3), dtype=np.float32)):
        for levels in range(max_levels(h, w) + 1):
            pyramid = laplacian_pyramid(image, levels)
            assert len(pyramid) == levels + 1
            for level, band in enumerate(pyramid):
                assert band.shape[:2] == (-(-h // 2**level), -(-w // 2**level))
            np.testing.assert_allclose(reconstruct(pyramid), image, atol=1e-5)
    with pytest.raises(ConfigError):
        laplacian_pyramid(np.zeros((h, w), np.float32), max_levels(h, w) + 1)


def test_max_levels_hand_computed():
    assert max_levels(28, 28) == 4  # 14, 7, 4, 2
    assert max_levels(128, 128) == 6  # 64 .. 2
    assert max_levels(97, 83) == 6  # 49x42, 25x21, 13x11, 7x6, 4x3, 2x2
    assert max_levels(3, 3) == 1
    assert max_levels(2, 9) == 0


def test_level_alphas_hand_computed():
    # alpha_l = min(alpha, max(0, (lambda_l / lambda_c) (1 + alpha) - 1)), lambda_l = 2, 4, 8, 16, 32
    np.testing.assert_allclose(level_alphas(10, 16, 4), [0.375, 1.75, 4.5, 10, 10])
    np.testing.assert_allclose(level_alphas(10, 64, 4), [0, 0, 0.375, 1.75, 4.5])
    np.testing.assert_allclose(level_alphas(5, None, 2), [5, 5, 5])
    with pytest.raises(ConfigError):
        level_alphas(-1, 16, 2)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("alpha", [4.0, 9.0])
def test_motion_is_amplified_one_plus_alpha_times(size, alpha):
    h, w = size
    true_shift = np.array([0.1, -0.06])
    clip = translated_clip(h, w, [(0.0, 0.0), tuple(true_shift)])
    for frames in (clip, np.round(clip * 255).astype(np.uint8)):
        magnified = magnify(frames, fps=30, alpha=alpha, filter="onset", lambda_c=None)
        assert magnified.shape == frames.shape and magnified.dtype == frames.dtype
        np.testing.assert_array_equal(magnified[0], frames[0])  # relative to the first frame
        ratio = measured_shift(magnified[0], magnified[1]) / true_shift
        # an implementation that skips sizes not divisible by 2**levels would give ratio 1
        np.testing.assert_allclose(ratio, 1 + alpha, rtol=0.1)


@pytest.mark.parametrize("filter,band", [("ideal", (1.0, 4.0)), ("iir", (1.0, 4.0))])
def test_band_pass_amplifies_in_band_oscillation(filter, band):
    # displacement A sin(2 pi f0 t), f0 = 2 Hz at 40 fps (period 20 frames), 4 full cycles;
    # f0 = sqrt(1 * 4) is the Butterworth band's centre, where its zero-phase gain is 1
    fps, f0, amplitude, alpha = 40.0, 2.0, 0.05, 6.0
    t = np.arange(80) / fps
    shifts = [(amplitude * np.sin(2 * np.pi * f0 * s), 0.5 * amplitude * np.sin(2 * np.pi * f0 * s)) for s in t]
    clip = translated_clip(64, 72, shifts)
    magnified = magnify(clip, fps=fps, alpha=alpha, low_hz=band[0], high_hz=band[1], lambda_c=None, filter=filter, levels=3)
    peak, trough = 25, 35  # sin = +1 and -1, mid-clip (away from the IIR's edge transients)
    ratio = measured_shift(magnified[peak], magnified[trough]) / (np.array(shifts[trough]) - np.array(shifts[peak]))
    np.testing.assert_allclose(ratio, 1 + alpha, rtol=0.12)
    # an out-of-band oscillation is left alone (the 0.1 px motion stays 0.1 px, not 0.7)
    still = magnify(clip, fps=fps, alpha=alpha, low_hz=5.0, high_hz=15.0, lambda_c=None, filter="ideal")
    np.testing.assert_allclose(measured_shift(still[peak], still[trough]), measured_shift(clip[peak], clip[trough]), atol=0.01)


def test_ideal_filter_removes_dc_and_keeps_band_exactly():
    # the ideal filter works on the mirror-extended series (a DCT band-pass): the DCT-II basis
    # cos(pi k (t + 1/2) / T) is a pure tone of k * fps / 2T Hz there (0.25 Hz steps at 20 fps, T = 40)
    t = np.arange(40)
    tone = lambda k: np.cos(np.pi * k * (t + 0.5) / 40)
    signal = (3.0 + tone(8) + tone(28))[:, None].astype(np.float32)  # DC + 2 Hz + 7 Hz
    np.testing.assert_allclose(temporal_filter(signal, 20.0, 0.0, 5.0, "ideal")[:, 0], tone(8), atol=1e-5)
    np.testing.assert_allclose(temporal_filter(signal, 20.0, 5.0, 10.0, "ideal")[:, 0], tone(28), atol=1e-5)
    np.testing.assert_allclose(temporal_filter(signal, 20.0, 0, 1, "onset"), signal - signal[0])
    # a ramp (first frame != last frame) does not ring at the ends: the band keeps it almost whole
    ramp = np.linspace(0, 1, 40, dtype=np.float32)[:, None]
    kept = temporal_filter(ramp, 20.0, 0.0, 8.0, "ideal")[:, 0]
    assert np.abs((kept - kept[0]) - ramp[:, 0]).max() < 0.05


def test_a_band_no_frequency_of_the_clip_falls_in_is_reported(caplog):
    # 6 frames at 200 fps: the mirrored series resolves 200 / 12 = 16.7 Hz steps, all above 15 Hz
    signal = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    with caplog.at_level("WARNING", logger="merkit.preprocess.magnify"):
        assert not temporal_filter(signal, 200.0, 0.4, 15.0, "ideal").any()
    assert "left unmagnified" in caplog.text and "6-frame clip at 200.0 fps" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="merkit.preprocess.magnify"):
        temporal_filter(signal, 30.0, 0.4, 15.0, "ideal")
    assert caplog.text == ""


def test_lambda_c_attenuates_fine_texture():
    # a fine texture (wavelengths 5-40 px) with lambda_c = 64 gets far less than alpha
    clip = translated_clip(64, 64, [(0.0, 0.0), (0.1, 0.0)], shortest=5.0)
    full = measured_shift(*magnify(clip, fps=30, alpha=8.0, filter="onset", lambda_c=None))[0] / 0.1
    attenuated = measured_shift(*magnify(clip, fps=30, alpha=8.0, filter="onset", lambda_c=64.0))[0] / 0.1
    assert full > 7.5 and 1.0 < attenuated < 0.7 * full


def test_identity_and_errors():
    clip = np.random.default_rng(0).integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(magnify(clip, fps=100, alpha=0.0), clip)
    out = magnify(clip.astype(np.float32) / 255, fps=100, alpha=5.0, levels=9)  # levels capped for 20x24
    assert out.shape == clip.shape and out.dtype == np.float32
    with pytest.raises(PreprocessError):
        magnify(clip[:1], fps=100)
    with pytest.raises(ConfigError):
        magnify(clip, fps=100, filter="butter")
    with pytest.raises(ConfigError):
        magnify(clip, fps=100, low_hz=10, high_hz=60, filter="iir")  # above Nyquist
    with pytest.raises(ConfigError):
        magnify(clip, fps=100, low_hz=5, high_hz=2)


def test_synthme_expression_is_magnified():
    """On SynthME the onset->frame flow after magnification is ~(1 + alpha) x the true flow.

    Measured where the first-order approximation holds for the face's fine skin texture
    ((1 + alpha) delta ~ 0.4 px): the rising frame at 5% of the apex intensity.
    """
    cv2_gray = lambda frames: np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    from merkit.data.synthetic import SynthConfig, generate_clip
    from merkit.preprocess.flow import optical_flow

    alpha = 3.0
    ratios = {"ideal": [], "onset": [], "none": []}
    for index in range(3):
        clip = generate_clip(SynthConfig.from_preset("default"), index + 1, index, seed=11)
        course = cv2_gray(clip.frames[clip.onset : clip.offset + 1])
        t = int(np.argmin(np.abs(clip.intensity[clip.onset : clip.apex + 1] - 0.05)))
        truth = clip.flow_at(clip.onset + t)
        size = np.hypot(truth[..., 0], truth[..., 1])
        moving = size > 0.5 * size.max()
        for name in ratios:
            frames = course if name == "none" else magnify(course, clip.fps, alpha=alpha, lambda_c=None, filter=name)
            flow = optical_flow(frames[0], frames[t], "tvl1")
            ratios[name].append(float((flow[moving] * truth[moving]).sum() / (truth[moving] ** 2).sum()))
    for name in ("ideal", "onset"):
        assert 0.65 * (1 + alpha) < np.mean(ratios[name]) < 1.3 * (1 + alpha), ratios
    assert np.mean(ratios["none"]) < 1.3, ratios
