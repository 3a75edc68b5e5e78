"""Temporal sampling: fixed-length positions, frame-rate resampling, interpolation, key frames.

Positions are 0-based indices into the clip handed in (``frames[0]`` is usually the onset).
Rounding is half-up (``floor(x + 0.5)``), never numpy's round-half-to-even.
"""

from __future__ import annotations

import numpy as np

from merkit.errors import ConfigError, PreprocessError

# absorbs float error in k * src / dst so exact halves round up and exact integers stay put
_EPS = 1e-9


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5 + _EPS).astype(np.int64)


def uniform_indices(n: int, length: int) -> np.ndarray:
    """``length`` evenly spaced positions in a clip of ``n`` frames, first and last included.

    Position i is ``round(i * (n - 1) / (length - 1))``; when ``n < length`` positions repeat
    (each frame at least once, in order). ``length == 1`` gives the middle frame ``(n - 1) // 2``.

    Returns:
        (length,) int64, non-decreasing, in [0, n - 1].
    """
    if n < 1 or length < 1:
        raise ConfigError(f"uniform_indices needs n >= 1 and length >= 1, got n={n}, length={length}")
    if length == 1:
        return np.array([(n - 1) // 2], dtype=np.int64)
    return _round_half_up(np.arange(length) * (n - 1) / (length - 1))


def resample_rate(n: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Positions that resample a clip of ``n`` frames from ``src_fps`` to ``dst_fps``.

    Output frame k lies at time ``k / dst_fps`` after the first frame and takes the nearest
    source frame ``round(k * src_fps / dst_fps)``, for every k whose time falls within the clip
    (``k <= (n - 1) * dst_fps / src_fps``). So the first frame is always kept and the output
    covers the clip's duration; upsampling (dst > src) repeats frames.
    E.g. 100 frames, 200 -> 30 Hz: 15 positions 0, 7, 13, 20, 27, 33, 40, ..., 87, 93.

    Returns:
        (K,) int64 positions, K = floor((n - 1) * dst_fps / src_fps) + 1.
    """
    if n < 1 or src_fps <= 0 or dst_fps <= 0:
        raise ConfigError(f"resample_rate needs n >= 1 and positive rates, got n={n}, {src_fps} -> {dst_fps} Hz")
    count = int(np.floor((n - 1) * dst_fps / src_fps + _EPS)) + 1
    return np.minimum(_round_half_up(np.arange(count) * src_fps / dst_fps), n - 1)


def interpolate_frames(frames: np.ndarray, length: int) -> np.ndarray:
    """Resample a clip to ``length`` frames by linear interpolation in time.

    Output frame i sits at clip time ``s = i * (T - 1) / (length - 1)`` and is
    ``(1 - a) * frames[floor(s)] + a * frames[floor(s) + 1]`` with ``a = s - floor(s)``: a
    simple linear stand-in for the temporal interpolation model (TIM); first and last frames
    are kept exactly, and a clip that changes linearly in time is reproduced exactly.

    Args:
        frames: (T, ...) array, T >= 1. length: >= 1 (1 gives the frame at mid-clip).

    Returns:
        (length, ...) float32 in the input's value scale.
    """
    frames = np.asarray(frames)
    if frames.ndim < 1 or len(frames) == 0:
        raise PreprocessError(f"interpolate_frames needs a (T, ...) clip with T >= 1, got shape {frames.shape}")
    if length < 1:
        raise ConfigError(f"interpolate_frames needs length >= 1, got {length}")
    count = len(frames)
    data = frames.astype(np.float32)
    if count == 1:
        return np.repeat(data, length, axis=0)
    times = np.full(1, (count - 1) / 2) if length == 1 else np.arange(length) * (count - 1) / (length - 1)
    lower = np.minimum(np.floor(times + _EPS).astype(np.int64), count - 2)
    weight = (times - lower).astype(np.float32).reshape((-1,) + (1,) * (frames.ndim - 1))
    return (1.0 - weight) * data[lower] + weight * data[lower + 1]


def spatio_temporal_slices(frames: np.ndarray, rows: int | None = 32) -> np.ndarray:
    """Horizontal spatio-temporal slices of a clip (paper 004, Eq. 3.1).

    The horizontal slice of frame i at row y is ``h_i(y) = frames[i, y, :]``; stacking it over
    i gives the (T, W) spatio-temporal slice image of row y.

    Args:
        frames: (T, H, W) grey or (T, H, W, C) frames (channels are averaged), any dtype.
        rows: number of slice rows, evenly spaced over the height (None: every row).

    Returns:
        (T, R, W) float32: entry [i, r] is the slice of frame i at the r-th chosen row.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or len(frames) == 0:
        raise PreprocessError(f"spatio-temporal slices need (T, H, W[, C]) frames, got shape {frames.shape}")
    gray = frames.astype(np.float32)
    if gray.ndim == 4:
        gray = gray.mean(axis=3)
    height = gray.shape[1]
    if rows is not None and rows < height:
        gray = gray[:, uniform_indices(height, rows)]
    return gray


def slice_mismatch(slices: np.ndarray, reference: np.ndarray, search: int = 0) -> np.ndarray:
    """Mean squared mismatch between the slices of some frames and one reference frame.

    Each pixel of a slice is compared with the closest-valued pixel of the reference slice
    within ``search`` columns (nearest-pixel matching; ``search=0`` compares pixel x with
    pixel x), and the squared differences are averaged over the slice rows and columns.

    Args:
        slices: (N, R, W) slices of N frames. reference: (R, W) slices of the reference frame.
        search: matching radius in pixels.

    Returns:
        (N,) float64 mean squared mismatch.
    """
    best = (slices - reference) ** 2
    width = slices.shape[-1]
    for shift in range(1, min(search, width - 1) + 1):
        best[..., shift:] = np.minimum(best[..., shift:], (slices[..., shift:] - reference[..., :-shift]) ** 2)
        best[..., :-shift] = np.minimum(best[..., :-shift], (slices[..., :-shift] - reference[..., shift:]) ** 2)
    return best.reshape(len(slices), -1).mean(axis=1).astype(np.float64)


# the smallest step of keyframes_sts(num=k), in noise RMS: changes below it are estimator noise
_MIN_STEP = 0.5


def keyframes_sts(
    frames: np.ndarray,
    num: int | None = None,
    threshold: float = 1.0,
    rows: int | None = 32,
    search: int = 0,
) -> np.ndarray:
    """Key frames from spatio-temporal slices (paper 004, Sec. 3.2 (3)).

    Paper 004 says only that key frames are found "by measuring the pixel proximity of the
    adjacent spatio-temporal slices and by using the nearest pixel matching method". Our reading,
    in three steps:

    1. Slice distance. The mismatch of two frames is the mean squared difference of their
       horizontal slices (:func:`spatio_temporal_slices`, :func:`slice_mismatch`). Sensor noise
       adds a constant ``2 sigma^2`` to it (noise and motion add in mean square), so the noise
       level is estimated as the median mismatch of *adjacent* frames (at 100-200 fps a face
       moves far less than a pixel between two frames: adjacent slices differ by noise only) and
       removed: ``distance(k, i) = sqrt(max(0, mismatch(k, i) - noise))``, in grey levels.
    2. Sequential selection. Frame 0 is a key frame; frame i becomes the next one when its
       slices stop matching those of the last key frame, ``distance(last, i) >= step``. The
       last frame is always a key frame. Key frames are thus dense where the face moves
       (onset -> apex -> offset) and absent where it rests.
    3. The step. ``num=None``: ``threshold`` times the noise RMS ``sqrt(noise)``. ``num=k``:
       the largest step that yields at least k key frames (bisection); when it yields more
       (steps are discrete), k of them are kept evenly (first and last included). Steps below
       half the noise RMS are not used (the distance estimate itself fluctuates that much): a
       clip that does not yield k key frames even then (too little change above the noise),
       or has fewer than k frames, falls back to :func:`uniform_indices` (which repeats
       frames when T < k).

    ``search`` enables the paper's nearest-pixel matching within that many columns. It is 0 by
    default: between key frames of a micro-expression the texture moves by a fraction of a
    pixel, where matching mostly picks the noise; it suits low frame rates and large motions.

    Args:
        frames: (T, H, W) grey or (T, H, W, C) frames.
        num: number of key frames, or None for the threshold rule.
        threshold: step in multiples of the noise RMS (``num=None`` only).
        rows: number of slice rows (None: all). search: matching radius in pixels.

    Returns:
        (num,) or (K,) int64 positions, sorted (strictly increasing when T >= num).
    """
    slices = spatio_temporal_slices(frames, rows)
    count = len(slices)
    if num is not None and num < 1:
        raise ConfigError(f"keyframes_sts needs num >= 1, got {num}")
    if num is None and threshold <= 0:
        raise ConfigError(f"keyframes_sts needs threshold > 0, got {threshold}")
    if count == 1:
        return np.zeros(num or 1, dtype=np.int64)
    adjacent = np.array([slice_mismatch(slices[i : i + 1], slices[i - 1], search)[0] for i in range(1, count)])
    noise = float(np.median(adjacent))

    distance_cache: dict[int, np.ndarray] = {}

    def distances(key: int) -> np.ndarray:
        """(T,) noise-corrected slice distance of every frame to frame ``key``."""
        if key not in distance_cache:
            mismatch = slice_mismatch(slices, slices[key], search)
            distance_cache[key] = np.sqrt(np.maximum(mismatch - noise, 0.0))
        return distance_cache[key]

    def select(step: float) -> list[int]:
        keys = [0]
        while True:
            later = np.flatnonzero(distances(keys[-1])[keys[-1] + 1 :] >= step)
            if later.size == 0:
                break
            keys.append(keys[-1] + 1 + int(later[0]))
        if keys[-1] != count - 1:
            keys.append(count - 1)
        return keys

    if num is None:
        return np.asarray(select(max(threshold * np.sqrt(noise), np.finfo(np.float64).tiny)), dtype=np.int64)
    if num <= 2 or count < num:
        return uniform_indices(count, num)
    low = _MIN_STEP * np.sqrt(noise) + np.finfo(np.float64).tiny
    if len(select(low)) < num:
        return uniform_indices(count, num)
    high = float(distances(0).max()) + 1.0  # nothing is that far from frame 0: 2 key frames
    for _ in range(40):  # invariant: select(low) has >= num key frames, select(high) fewer
        middle = 0.5 * (low + high)
        if len(select(middle)) >= num:
            low = middle
        else:
            high = middle
    keys = np.asarray(select(low), dtype=np.int64)
    return keys[uniform_indices(len(keys), num)]
