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

from dataclasses import dataclass
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


# --------------------------------------------------------------------------- intervals in long videos
#
# Spotting in a long recording (no interval given) follows the feature-difference scheme of
# Moilanen, Zhao & Pietikainen (ICPR 2014): frame t is compared with the frames k before and k
# after it, and the contrast
#
#     C(t) = D(t, t - k) + D(t, t + k) - D(t - k, t + k)
#
# is high when the face at t differs from both neighbours while they agree (an expression that
# rises and returns within 2k frames), and about the noise level during a neutral stretch or a
# steady drift (then D(t - k, t + k) ~ D(t, t - k) + D(t, t + k)). D is the ``diff`` distance
# (mean absolute difference of mean-normalised grey frames) or the ``flow`` distance (mean
# non-rigid optical-flow magnitude, as for apex spotting). Candidates are the peaks of the robust
# z-score of C (median and MAD over the whole recording) above ``threshold``, at least k frames
# apart; each candidate's onset, apex and offset are then read from a window of ``max_duration``
# on either side: the profile is the change from the window's two end frames (root mean squared
# difference above the neutral floor, see _interval_around), the apex its maximum near the
# peak, onset and offset the nearest frames before and after it where the profile has fallen to
# ``onset_level`` of the apex's. Intervals outside ``min_duration`` .. ``max_duration``
# (0.04-0.5 s, the micro-expression range) are dropped.

SPOTTING_DISTANCES: tuple[str, ...] = ("diff", "flow")


@dataclass(frozen=True)
class SpottedInterval:
    """One candidate micro-expression in a recording; positions are 0-based frame positions.

    Attributes:
        onset, apex, offset: positions of the onset, apex and offset frames.
        score: the robust z-score of the window contrast at the candidate's peak.
    """

    onset: int
    apex: int
    offset: int
    score: float


@dataclass(frozen=True)
class SpottingResult:
    """Spotting of a recording: per-frame motion score and the intervals found.

    Attributes:
        scores: (T,) robust z-score of the window contrast per frame.
        intervals: candidates in time order.
        dropped: candidates outside the duration range, as ``(onset, apex, offset, reason)``.
    """

    scores: np.ndarray
    intervals: list[SpottedInterval]
    dropped: list[tuple[int, int, int, str]]


def _distance(gray: np.ndarray, first: np.ndarray, second: np.ndarray, method: str, chunk: int = 512) -> np.ndarray:
    """D(first[i], second[i]) for index arrays into ``gray`` (T, H, W) float32 mean-normalised."""
    out = np.empty(len(first))
    if method == "diff":
        for start in range(0, len(first), chunk):
            a, b = first[start:start + chunk], second[start:start + chunk]
            out[start:start + chunk] = np.abs(gray[a] - gray[b]).mean(axis=(1, 2))
        return out
    images = np.clip(gray / max(float(gray.max()), 1e-6), 0.0, 1.0)
    for i, (a, b) in enumerate(zip(first, second)):
        out[i] = 0.0 if a == b else float(_non_rigid_magnitude(optical_flow(images[a], images[b], "dis")).mean())
    return out


def window_contrast(frames: np.ndarray, half_window: int, method: str = "diff") -> np.ndarray:
    """Per-frame contrast ``C(t) = D(t, t-k) + D(t, t+k) - D(t-k, t+k)`` with ``k = half_window``
    (indices clipped to the recording), see the comment above :class:`SpottedInterval`.

    Args:
        frames: (T, H, W) grey or (T, H, W, 3) RGB frames, uint8 or float in [0, 1], T >= 2.
        half_window: k in frames (>= 1).
        method: ``diff`` or ``flow``.

    Returns:
        (T,) float64.
    """
    check_choice("spotting distance", method, SPOTTING_DISTANCES)
    if half_window < 1:
        raise ConfigError(f"spotting half window must be at least 1 frame, got {half_window}")
    gray = _gray_clip(frames).astype(np.float32)
    count = len(gray)
    t = np.arange(count)
    before, after = np.clip(t - half_window, 0, count - 1), np.clip(t + half_window, 0, count - 1)
    back = _distance(gray, t, before, method)  # D(t, t - k); D(t, t + k) is back[t + k] inside the clip
    forward = back[np.minimum(t + half_window, count - 1)].copy()
    tail = t + half_window >= count  # the last k frames: their t + k is clipped to the last frame
    forward[tail] = _distance(gray, t[tail], after[tail], method)
    return back + forward - _distance(gray, before, after, method)


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(values - median) / (1.4826 * MAD)``; a constant signal gives zeros."""
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    if spread <= 0:
        spread = float(np.std(values))
    return (values - median) / spread if spread > 0 else np.zeros_like(values, dtype=np.float64)


def _peaks(scores: np.ndarray, height: float, distance: int) -> np.ndarray:
    """Positions of local maxima reaching ``height``, at least ``distance`` apart (the higher
    peak wins), in time order."""
    inner = scores[1:-1]
    local = np.flatnonzero((inner >= height) & (inner >= scores[:-2]) & (inner > scores[2:])) + 1
    kept: list[int] = []
    for position in local[np.argsort(-scores[local], kind="stable")]:
        if all(abs(position - other) >= distance for other in kept):
            kept.append(int(position))
    return np.asarray(sorted(kept), dtype=np.int64)


def _interval_around(gray: np.ndarray, peak: int, reach: int, onset_level: float) -> tuple[int, int, int]:
    """(onset, apex, offset) positions of the expression near ``peak`` (see the comment above).

    The profile is the root of the mean squared difference to the window's first and last
    frames minus its neutral floor (25th percentile): squared differences add the noise
    variance, so what is left grows linearly with the expression's intensity, whereas a mean
    absolute difference rises quadratically out of the noise and puts onsets late. Onset and
    offset are where the profile falls to ``onset_level`` of its apex value, or to the noise
    (the 90th percentile of the profile over the window's quieter half), whichever is higher.
    """
    first, last = max(0, peak - reach), min(len(gray) - 1, peak + reach)
    window = gray[first:last + 1]
    squared = ((window - window[0]) ** 2).mean(axis=(1, 2)) + ((window - window[-1]) ** 2).mean(axis=(1, 2))
    squared = gaussian_filter1d(squared.astype(np.float64), 1.0, mode="nearest")
    profile = np.sqrt(np.maximum(squared - np.percentile(squared, 25), 0.0))
    near = slice(max(0, peak - first - reach // 2), min(len(profile), peak - first + reach // 2 + 1))
    apex = near.start + int(np.argmax(profile[near]))
    neutral = profile[squared <= np.median(squared)]  # at least half the window is neutral
    level = max(onset_level * profile[apex], float(np.percentile(neutral, 90)))
    onset = apex
    while onset > 0 and profile[onset - 1] > level:
        onset -= 1
    offset = apex
    while offset < len(profile) - 1 and profile[offset + 1] > level:
        offset += 1
    return first + onset, first + apex, first + offset


def spot_intervals(
    frames: np.ndarray,
    fps: float,
    *,
    method: str = "diff",
    min_duration: float = 0.04,
    max_duration: float = 0.5,
    half_window: float = 0.1,
    threshold: float = 5.0,
    onset_level: float = 0.1,
    smooth: float = 0.01,
) -> SpottingResult:
    """Candidate micro-expression intervals in a recording (see the comment above).

    Args:
        frames: (T, H, W) grey or (T, H, W, 3) RGB face frames, uint8 or float in [0, 1].
        fps: frame rate.
        method: ``diff`` or ``flow`` distance.
        min_duration, max_duration: the duration range of a micro-expression, seconds
            (onset to offset).
        half_window: k of the window contrast, seconds (at least one frame).
        threshold: the robust z-score a peak must reach.
        onset_level: fraction of the peak (above the neutral floor) that delimits onset and offset.
        smooth: sigma of the Gaussian smoothing of the contrast, seconds (0: none).

    Returns:
        :class:`SpottingResult`.

    Raises:
        ClipTooShortError: fewer frames than two half windows plus one.
        ConfigError: a duration range or level out of bounds.
    """
    from merkit.errors import ClipTooShortError

    if fps <= 0 or not 0 < min_duration < max_duration or not 0 < onset_level < 1:
        raise ConfigError(f"spotting needs fps > 0, 0 < min_duration < max_duration and 0 < onset_level < 1; got "
                          f"fps={fps}, durations {min_duration}..{max_duration} s, onset_level={onset_level}")
    k = max(1, int(round(half_window * fps)))
    if len(frames) < 2 * k + 1:
        raise ClipTooShortError(f"spotting needs at least {2 * k + 1} frames ({2 * k + 1} at {fps:g} fps: two "
                                f"{half_window:g} s half windows), got {len(frames)}")
    contrast = window_contrast(frames, k, method)
    if smooth > 0:
        contrast = gaussian_filter1d(contrast, max(smooth * fps, 0.5), mode="nearest")
    scores = robust_z(contrast)
    peaks = _peaks(scores, threshold, k)
    gray = _gray_clip(frames).astype(np.float32)
    reach = max(2, int(round(max_duration * fps)))
    intervals, dropped = [], []
    for peak in peaks:
        onset, apex, offset = _interval_around(gray, int(peak), reach, onset_level)
        duration = (offset - onset) / fps
        if duration < min_duration or duration > max_duration:
            reason = f"lasts {duration:.3f} s, outside {min_duration:g}..{max_duration:g} s"
            dropped.append((onset, apex, offset, reason))
            continue
        if intervals and onset <= intervals[-1].offset:  # one expression seen from two peaks
            if scores[peak] > intervals[-1].score:
                intervals[-1] = SpottedInterval(onset, apex, offset, float(scores[peak]))
            continue
        intervals.append(SpottedInterval(onset, apex, offset, float(scores[peak])))
    return SpottingResult(scores=scores, intervals=intervals, dropped=dropped)
