"""Optical flow, strain and flow views against analytic ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from merkit.errors import ConfigError, PreprocessError
from merkit.preprocess.flow import (
    flow_sequence,
    flow_view,
    megc_flow_image,
    optical_flow,
    optical_strain,
    resize_flow,
)


def texture(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Analytic texture in [0, 1]: a sum of sinusoids of random orientation, wavelength 7-30 px."""
    rng = np.random.default_rng(seed)
    value = np.zeros_like(x, dtype=np.float64)
    for _ in range(24):
        angle = rng.uniform(0, np.pi)
        wavelength = rng.uniform(7, 30)
        k = 2 * np.pi / wavelength
        value += np.cos(k * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 2 * np.pi))
    return (0.5 + 0.5 * value / np.abs(value).max()).astype(np.float32)


def affine_pair(h: int, w: int, matrix: np.ndarray, shift: np.ndarray, seed: int = 0):
    """prev and next with next(p + A p + b) = prev(p) exactly; returns prev, next, true flow (H, W, 2)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    prev = texture(x, y, seed)
    inverse = np.linalg.inv(np.eye(2) + matrix)
    qx, qy = x - shift[0], y - shift[1]
    px = inverse[0, 0] * qx + inverse[0, 1] * qy
    py = inverse[1, 0] * qx + inverse[1, 1] * qy
    nxt = texture(px, py, seed)
    flow = np.stack([matrix[0, 0] * x + matrix[0, 1] * y + shift[0], matrix[1, 0] * x + matrix[1, 1] * y + shift[1]], -1)
    return prev, nxt, flow.astype(np.float32)


def endpoint_error(estimate: np.ndarray, truth: np.ndarray, border: int = 8) -> float:
    inner = (slice(border, -border), slice(border, -border))
    diff = estimate[inner] - truth[inner]
    return float(np.mean(np.hypot(diff[..., 0], diff[..., 1])))


# a micro-expression-sized motion: ~0.6 px translation plus a 0.4% affine deformation;
# u and v differ enough that swapping or negating them is far off
MATRIX = np.array([[0.004, -0.003], [0.002, 0.005]])
SHIFT = np.array([0.6, -0.35])


@pytest.fixture(scope="module")
def pair():
    return affine_pair(96, 112, MATRIX, SHIFT)


@pytest.mark.parametrize("method,bound", [("tvl1", 0.06), ("dis", 0.08), ("farneback", 0.08)])
def test_flow_recovers_affine_motion(pair, method, bound):
    prev, nxt, truth = pair
    for prev_in, next_in in [(prev, nxt), (np.round(prev * 255).astype(np.uint8), np.round(nxt * 255).astype(np.uint8))]:
        flow = optical_flow(prev_in, next_in, method)
        assert flow.shape == (96, 112, 2) and flow.dtype == np.float32
        assert endpoint_error(flow, truth) < bound
        # a broken convention is far outside the bound
        assert endpoint_error(flow[..., ::-1], truth) > 4 * bound, "swapped u/v must fail"
        assert endpoint_error(-flow, truth) > 4 * bound, "wrong sign must fail"
        assert endpoint_error(flow, np.zeros_like(truth)) > 4 * bound


def test_rgb_input_and_params(pair):
    prev, nxt, truth = pair
    rgb = lambda g: np.repeat(np.round(g * 255).astype(np.uint8)[..., None], 3, axis=2)
    flow = optical_flow(rgb(prev), rgb(nxt), "dis", preset="fast", finest_scale=1)
    assert endpoint_error(flow, truth) < 0.1
    flow = optical_flow(prev, nxt, "tvl1", nscales=3, warps=3, lambda_=0.2)
    assert endpoint_error(flow, truth) < 0.08
    flow = optical_flow(prev, nxt, "farneback", winsize=11)
    assert endpoint_error(flow, truth) < 0.1


def test_flow_errors(pair):
    prev, nxt, _ = pair
    with pytest.raises(ConfigError):
        optical_flow(prev, nxt, "lucas-kanade")
    with pytest.raises(ConfigError, match="no parameter"):
        optical_flow(prev, nxt, "dis", iterations=3)
    with pytest.raises(ConfigError, match="no parameter"):
        optical_flow(prev, nxt, "farneback", tau=0.2)
    with pytest.raises(PreprocessError, match="0, 1"):
        optical_flow(prev * 255, nxt * 255, "dis")
    with pytest.raises(PreprocessError, match="one size"):
        optical_flow(prev, nxt[:-1], "dis")


def test_strain_linear_field_hand_computed():
    # u = a x + b y, v = c x + d y  =>  strain = sqrt(a^2 + d^2 + (b + c)^2 / 2) everywhere
    a, b, c, d = 0.1, 0.2, -0.4, 0.3
    y, x = np.mgrid[0:10, 0:12].astype(np.float32)
    flow = np.stack([a * x + b * y, c * x + d * y], -1)
    strain = optical_strain(flow)
    assert strain.shape == (10, 12) and strain.dtype == np.float32
    np.testing.assert_allclose(strain, np.sqrt(0.01 + 0.09 + 0.5 * 0.04), rtol=1e-5)
    # swapping the off-diagonal roles (u_y <-> v_x) leaves strain unchanged, but a pure rotation has none
    rotation = np.stack([-0.3 * y, 0.3 * x], -1)
    np.testing.assert_allclose(optical_strain(rotation), 0.0, atol=1e-6)
    # a pure dilation u = e x, v = e y has strain sqrt(2) e
    np.testing.assert_allclose(optical_strain(np.stack([0.2 * x, 0.2 * y], -1)), np.sqrt(2) * 0.2, rtol=1e-5)


def test_strain_quadratic_field_interior():
    # u = x^2 / 10 (u_x = x / 5), v = x * y / 10 (v_x = y / 10, v_y = x / 10); central differences are exact here
    y, x = np.mgrid[0:9, 0:9].astype(np.float64)
    flow = np.stack([x**2 / 10, x * y / 10], -1)
    expected = np.sqrt((x / 5) ** 2 + (x / 10) ** 2 + 0.5 * (y / 10) ** 2)
    np.testing.assert_allclose(optical_strain(flow)[1:-1, 1:-1], expected[1:-1, 1:-1], rtol=1e-5)


def test_flow_view_rescales_u_by_width_and_v_by_height():
    # 96 x 128 -> 48 x 32: heights halve, widths quarter
    prev, nxt, truth = affine_pair(96, 128, np.zeros((2, 2)), np.array([0.8, -0.4]))
    view = flow_view(prev, nxt, "tvl1", size=(48, 32))
    assert view.shape == (3, 48, 32) and view.dtype == np.float32
    inner = view[:, 4:-4, 4:-4]
    assert np.median(inner[0]) == pytest.approx(0.8 * 32 / 128, abs=0.02)
    assert np.median(inner[1]) == pytest.approx(-0.4 * 48 / 96, abs=0.02)
    assert np.median(inner[2]) < 0.02  # a translation has no strain
    full = flow_view(prev, nxt, "tvl1")
    assert full.shape == (3, 96, 128)
    assert np.median(full[0, 8:-8, 8:-8]) == pytest.approx(0.8, abs=0.05)


def test_resize_flow_is_exact_on_linear_fields():
    y, x = np.mgrid[0:40, 0:60].astype(np.float32)
    flow = np.stack([np.full_like(x, 3.0), np.full_like(y, -2.0)], -1)
    resized = resize_flow(flow, (20, 15))
    np.testing.assert_allclose(resized[..., 0], 3.0 * 15 / 60, rtol=1e-6)
    np.testing.assert_allclose(resized[..., 1], -2.0 * 20 / 40, rtol=1e-6)
    enlarged = resize_flow(flow, 80)
    np.testing.assert_allclose(enlarged[..., 0], 3.0 * 80 / 60, rtol=1e-6)
    np.testing.assert_allclose(enlarged[..., 1], -2.0 * 2, rtol=1e-6)


def test_megc_flow_image_channels_and_scaling():
    y, x = np.mgrid[0:28, 0:28].astype(np.float32)
    flow = np.stack([x - 5.0, 0.5 * y**2], -1)  # u: ramp in x, v: quadratic in y
    image = megc_flow_image(flow, size=28)
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], np.round(255 * x / 27).astype(np.uint8))
    np.testing.assert_array_equal(image[..., 1], np.round(255 * y**2 / 27**2).astype(np.uint8))
    for channel in range(3):
        assert image[..., channel].min() == 0 and image[..., channel].max() == 255
    # strain = sqrt(1 + y^2 + 0.5 * 0) inside: grows with y, constant along x
    strain_channel = image[1:-1, 1:-1, 2].astype(int)
    assert np.all(np.diff(strain_channel, axis=0) >= 0) and np.all(np.diff(strain_channel, axis=1) == 0)
    # a constant channel maps to 0, and a given strain is used as is
    constant = megc_flow_image(np.zeros((56, 56, 2), np.float32), np.ones((56, 56), np.float32))
    assert constant.shape == (28, 28, 3) and not constant.any()


def test_flow_sequence_matches_flow_view(pair):
    prev, nxt, _ = pair
    frames = np.stack([nxt, prev, nxt])
    sequence = flow_sequence(frames, onset_index=1, method="dis", size=(24, 28))
    assert sequence.shape == (3, 3, 24, 28) and sequence.dtype == np.float32
    assert not sequence[1].any()
    np.testing.assert_allclose(sequence[0], flow_view(prev, nxt, "dis", (24, 28)), atol=1e-6)
    np.testing.assert_allclose(sequence[2], sequence[0], atol=1e-6)
    with pytest.raises(PreprocessError):
        flow_sequence(frames, onset_index=3)


# --------------------------------------------------------------------------- SynthME ground truth
def synthme_apex_pairs(preset: str, count: int = 3):
    """(onset, apex, true flow, face mask) of SynthME clips at 128 px."""
    import cv2

    from merkit.data.synthetic import SynthConfig, generate_clip

    pairs = []
    for index in range(count):
        clip = generate_clip(SynthConfig.from_preset(preset), index + 1, index, seed=11)
        mask = np.zeros(clip.frames.shape[1:3], np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(clip.landmarks_at(clip.onset).astype(np.int32)), 1)
        pairs.append((clip.frames[clip.onset], clip.frames[clip.apex], clip.flow_at(clip.apex), mask.astype(bool)))
    return pairs


@pytest.fixture(scope="module", params=["default", "hard"])
def synthme_pairs(request):
    return request.param, synthme_apex_pairs(request.param)


# mean endpoint error (px) in the face at the apex; measured (3 clips, seed 11): default
# tvl1 ~0.08, dis ~0.08, farneback ~0.18; hard ~0.10-0.13; true motion ~0.5-0.8 px
SYNTHME_BOUNDS = {"tvl1": 0.15, "dis": 0.15, "farneback": 0.28}


@pytest.mark.parametrize("method", ["tvl1", "dis", "farneback"])
def test_flow_against_synthme_ground_truth(synthme_pairs, method):
    preset, pairs = synthme_pairs
    errors, swapped, negated, zero = [], [], [], []
    for onset, apex, truth, face in pairs:
        flow = optical_flow(onset, apex, method)
        epe = lambda f: float(np.mean(np.hypot(*(f[face] - truth[face]).T)))
        errors.append(epe(flow))
        swapped.append(epe(flow[..., ::-1]))
        negated.append(epe(-flow))
        zero.append(epe(np.zeros_like(flow)))
    bound = SYNTHME_BOUNDS[method]
    assert np.mean(errors) < bound, (preset, errors)
    # swapped u/v, a wrong sign, or no flow at all miss the bound on every clip
    assert min(swapped) > bound and min(negated) > bound and min(zero) > bound, (swapped, negated, zero)
