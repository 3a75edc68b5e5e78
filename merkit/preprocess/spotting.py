"""Apex spotting for clips without an annotated apex, and the apex policy.

Every method scores each frame of the onset..offset clip by how far the face has moved away
from the neutral reference and returns the position of the highest (temporally smoothed) score.
Frames are converted to grey and divided by their mean (a global gain or exposure change is
not an expression).

``diff``
    Mean absolute grey-level difference to the reference frame(s).
``flow``
    Mean magnitude of the optical flow (DIS by default) from the reference frame(s) after
    removing the least-squares affine motion of the whole frame (rigid head translation,
    rotation and scale are not an expression; a micro-expression moves a small part of the
    face, so it barely biases the fit).
``frequency``
    Frequency-domain spotting after Li, Huang & Zhao (ICIP 2018, "Can micro-expression be
    recognized based on single apex frame?"): the face is divided into ``blocks x blocks``
    blocks; for the temporal window of ``window`` frames centred on each frame, each block's
    volume is 3D-Fourier transformed and the energy of its coefficients whose spatial frequency
    radius is at least ``high_pass`` x Nyquist is summed over blocks and window. Our reading, since the paper
    gives the idea more than the formula: the transform is applied to the *difference* volume
    ``frames - reference`` (a still face then contributes nothing, so the score measures
    change, which is what the paper is after), squared amplitudes (energy) are summed rather
    than amplitudes (noise then adds a constant instead of swamping the signal), and the
    spatial high-pass drops slow shading and illumination changes while the window sum
    averages frame-to-frame noise.

Reference (``reference``): ``onset`` compares with the first frame; ``onset_offset`` (default)
adds the score against the last frame. A face that drifts steadily (head motion, lighting)
moves away from the onset and towards the offset at once, so the two distances add up to
about a constant, while an expression that rises and returns raises both at the apex.

Measured on SynthME (``bench/preprocess.py`` reports the figures): apex errors of a few frames
are inherent, since a raised-cosine expression stays within 3% of its peak for several frames
around the apex; blinks and head motion of the size of the expression cause the large misses.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy.ndimage import gaussian_filter1d

from merkit.errors import ConfigError, PreprocessError, check_choice
from merkit.preprocess.flow import optical_flow, to_gray_float

SpottingMethod = Literal["diff", "flow", "frequency"]
SPOTTING_METHODS: tuple[str, ...] = ("diff", "flow", "frequency")
ApexPolicy = Literal["annotated", "middle", "spotted"]
APEX_POLICIES: tuple[str, ...] = ("annotated", "middle", "spotted")


def _gray_clip(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or len(frames) < 2:
        raise PreprocessError(f"apex spotting needs a (T, H, W[, 3]) clip with T >= 2, got shape {frames.shape}")
    gray = np.stack([to_gray_float(frame, f"frame {t}") for t, frame in enumerate(frames)])
    return gray / np.maximum(gray.mean(axis=(1, 2), keepdims=True), 1e-6)


def _diff_scores(gray: np.ndarray, references: list[int]) -> np.ndarray:
    return sum(np.abs(gray - gray[r]).mean(axis=(1, 2)) for r in references)


def _non_rigid_magnitude(flow: np.ndarray) -> np.ndarray:
    """(H, W) magnitude of a (H, W, 2) flow minus its least-squares affine fit."""
    height, width = flow.shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    design = np.stack([np.ones(height * width), x.ravel(), y.ravel()], axis=1)
    vectors = flow.reshape(-1, 2).astype(np.float64)
    coefficients, *_ = np.linalg.lstsq(design, vectors, rcond=None)
    residual = vectors - design @ coefficients
    return np.hypot(residual[:, 0], residual[:, 1]).reshape(height, width)


def _flow_scores(gray: np.ndarray, references: list[int], flow_method: str, flow_params: dict[str, Any]) -> np.ndarray:
    images = np.clip(gray / gray.max(), 0.0, 1.0).astype(np.float32)
    scores = np.zeros(len(images))
    for r in references:
        for t in range(len(images)):
            if t != r:
                flow = optical_flow(images[r], images[t], flow_method, **flow_params)
                scores[t] += float(_non_rigid_magnitude(flow).mean())
    return scores


def _frequency_scores(gray: np.ndarray, references: list[int], blocks: int, window: int, high_pass: float) -> np.ndarray:
    count, height, width = gray.shape
    blocks = max(1, min(blocks, height // 4, width // 4))
    row_edges = np.linspace(0, height, blocks + 1).astype(int)
    col_edges = np.linspace(0, width, blocks + 1).astype(int)
    half = window // 2
    scores = np.zeros(count)
    for r in references:
        difference = gray - gray[r]
        padded = np.concatenate([np.repeat(difference[:1], half, 0), difference, np.repeat(difference[-1:], half, 0)])
        # (count, window, H, W): the window of frames centred on each frame
        windows = np.moveaxis(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1, axis=0), -1, 1)
        for i in range(blocks):
            for j in range(blocks):
                block = windows[:, :, row_edges[i] : row_edges[i + 1], col_edges[j] : col_edges[j + 1]]
                radius = np.hypot(np.fft.fftfreq(block.shape[2])[:, None], np.fft.fftfreq(block.shape[3])[None, :])
                band = radius >= high_pass * 0.5  # Nyquist is 0.5 cycles per pixel
                spectrum = np.fft.fftn(block, axes=(1, 2, 3))
                scores += (np.abs(spectrum[:, :, band]) ** 2).sum(axis=(1, 2))
    return scores


def apex_scores(
    frames: np.ndarray,
    method: SpottingMethod = "diff",
    reference: Literal["onset", "onset_offset"] = "onset_offset",
    smooth: float = 1.0,
    flow_method: str = "dis",
    flow_params: dict[str, Any] | None = None,
    blocks: int = 6,
    window: int = 5,
    high_pass: float = 0.25,
) -> np.ndarray:
    """Per-frame apex score of a clip (see the module docstring).

    Args:
        frames: (T, H, W) grey or (T, H, W, 3) RGB clip from onset to offset, T >= 2; uint8 or
            float in [0, 1].
        method: ``diff``, ``flow`` or ``frequency``.
        reference: ``onset`` or ``onset_offset``.
        smooth: sigma in frames of the Gaussian smoothing of the scores (0: none).
        flow_method, flow_params: optical flow for ``flow``.
        blocks, window, high_pass: block grid, temporal window (frames) and spatial high-pass
            radius (fraction of Nyquist) for ``frequency``.

    Returns:
        (T,) float64 scores.
    """
    check_choice("apex spotting method", method, SPOTTING_METHODS)
    check_choice("spotting reference", reference, ("onset", "onset_offset"))
    gray = _gray_clip(frames)
    references = [0] if reference == "onset" else [0, len(gray) - 1]
    if method == "diff":
        scores = _diff_scores(gray, references)
    elif method == "flow":
        scores = _flow_scores(gray, references, flow_method, flow_params or {})
    else:
        if window < 1 or not 0 <= high_pass < 1:
            raise ConfigError(f"frequency spotting needs window >= 1 and 0 <= high_pass < 1, got {window}, {high_pass}")
        scores = _frequency_scores(gray, references, blocks, window, high_pass)
    scores = np.asarray(scores, dtype=np.float64)
    if smooth > 0:
        scores = gaussian_filter1d(scores, smooth, mode="nearest")
    return scores


def spot_apex(frames: np.ndarray, method: SpottingMethod = "diff", **options: Any) -> int:
    """Position of the apex in a clip from onset (position 0) to offset (position T-1).

    Args:
        frames: (T, H, W) or (T, H, W, 3) clip, T >= 2.
        method: ``diff``, ``flow`` or ``frequency``.
        **options: passed to :func:`apex_scores` (``reference``, ``smooth``, ...).

    Returns:
        0-based position of the highest score (the earliest one on ties).
    """
    return int(np.argmax(apex_scores(frames, method, **options)))


def resolve_apex(
    sample_frames_count: int,
    annotated_apex_pos: int | None,
    policy: ApexPolicy = "annotated",
    frames: np.ndarray | None = None,
    method: SpottingMethod = "diff",
    fallback: Literal["middle", "spotted"] | None = None,
    sample_id: str = "<sample>",
) -> tuple[int, str]:
    """Apply the apex policy to one clip.

    Positions are 0-based within the clip's onset..offset frames.

    Policies:
        ``annotated``: the annotated apex. When it is missing, ``fallback`` decides
            (``middle`` or ``spotted``); without a fallback a :class:`PreprocessError` naming
            the sample is raised, so a missing apex never silently becomes a guess.
        ``middle``: position ``(count - 1) // 2`` (the earlier of two middle frames).
        ``spotted``: :func:`spot_apex` on ``frames`` with ``method``.

    Args:
        sample_frames_count: number of frames from onset to offset.
        annotated_apex_pos: the annotated apex position, or None.
        policy: ``annotated``, ``middle`` or ``spotted``.
        frames: the clip (T == sample_frames_count), needed for ``spotted``.
        method: spotting method for ``spotted``.
        fallback: what ``annotated`` does when the apex is missing.
        sample_id: the sample's id for error messages.

    Returns:
        (position, source) with source ``annotated``, ``middle`` or ``spotted:<method>``.

    Raises:
        PreprocessError: missing apex without fallback, annotated apex outside the clip, or
            ``spotted`` without (matching) frames.
        ConfigError: unknown policy, fallback or method.
    """
    check_choice("apex policy", policy, APEX_POLICIES)
    check_choice("apex fallback", fallback, (None, "middle", "spotted"))
    if sample_frames_count < 1:
        raise PreprocessError(f"{sample_id}: the clip has no frames between onset and offset")
    if policy == "annotated":
        if annotated_apex_pos is not None:
            if not 0 <= annotated_apex_pos < sample_frames_count:
                raise PreprocessError(
                    f"{sample_id}: annotated apex position {annotated_apex_pos} lies outside the clip's "
                    f"{sample_frames_count} frames (expected 0..{sample_frames_count - 1})"
                )
            return int(annotated_apex_pos), "annotated"
        if fallback is None:
            raise PreprocessError(
                f"{sample_id}: no annotated apex; use apex policy 'middle' or 'spotted', or allow a fallback"
            )
        policy = fallback
    if policy == "middle":
        return (sample_frames_count - 1) // 2, "middle"
    if frames is None or len(frames) != sample_frames_count:
        got = "no frames" if frames is None else f"{len(frames)} frames"
        raise PreprocessError(f"{sample_id}: apex spotting needs the clip's {sample_frames_count} frames, got {got}")
    return spot_apex(frames, method), f"spotted:{method}"
