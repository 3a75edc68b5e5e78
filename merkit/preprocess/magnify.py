"""Eulerian video magnification (Wu et al., SIGGRAPH 2012), as used by paper 004.

Steps (paper 004, Sec. 3.2 (4)): a Laplacian pyramid of every frame (spatial filtering), a
temporal filter of every pyramid coefficient over time (the band ``B(x, t)`` of Eq. 3.5),
amplification of that band by a per-level factor ``alpha_l``, and pyramid reconstruction. In the
linear regime a displacement ``delta(t)`` becomes ``(1 + alpha) delta(t)`` (Eq. 3.3-3.7).

Pyramid: ``levels`` band-pass (Laplacian) levels plus the low-pass residual, built with
``cv2.pyrDown``/``cv2.pyrUp`` at explicit sizes, so build + reconstruct is exact (to float32
round-off) for every frame size, odd and non-powers-of-two included; nothing is cropped, padded
or skipped. Level ``l`` (0 = finest) holds spatial wavelengths of about ``2**(l+1)`` to
``2**(l+2)`` pixels of the input frames.

Amplification with the spatial cut-off ``lambda_c`` (Wu et al. Eq. 14): the first-order
approximation holds while ``(1 + alpha) delta(t) < lambda / 8``. With ``delta = lambda_c /
(8 (1 + alpha))`` (the largest motion allowed at wavelength ``lambda_c``), level ``l`` gets::

    alpha_l = min(alpha, max(0, lambda_l / (8 delta) - 1)) = min(alpha, max(0, (lambda_l / lambda_c) (1 + alpha) - 1))

with ``lambda_l = 2**(l+1)`` px, the *shortest* wavelength of the band (conservative: the bound
holds for every wavelength of the level); the residual uses ``2**(levels+1)``. ``lambda_c=None``
amplifies every level by ``alpha``. Unlike Wu et al.'s code, the finest band and the low-pass
residual are not zeroed but follow the same rule, so with ``lambda_c=None`` the result is exactly
the linear magnification ``I + alpha * B`` of paper 004's Eq. 3.6. Since reconstruction is linear,
the output is computed as ``frames + reconstruct(alpha_l * B_l)``.

Temporal filters (``filter``):
    ``ideal``: paper 004's choice: FFT of each coefficient's time series over the whole clip,
        frequencies outside ``[low_hz, high_hz]`` set to zero. The DC term (f = 0) is always
        removed: amplifying it would only rescale intensities. The series is mirror-extended
        (``x_0 .. x_{T-1} x_{T-1} .. x_0``) before the FFT, i.e. a DCT band-pass with
        frequency resolution fps / 2T: a clip whose last frame differs from its first (head
        drift, an expression that has not fully returned) would otherwise wrap around into a
        jump and ring at both ends of the clip, right on the onset frame.
    ``iir``: Butterworth band-pass of order ``order`` on ``[low_hz, high_hz]`` (the IIR
        variant of Wu et al.), applied forward and backward (zero phase, so the magnified motion
        is not delayed against the real one); needs ``0 < low_hz < high_hz < fps / 2``.
    ``onset``: linear magnification relative to the first frame, ``B(t) = I(t) - I(0)``
        (paper 004's Eq. 3.2 takes ``I(x, 0) = f(x)``: the displacement is measured from the
        first/onset frame); ``low_hz``/``high_hz`` are ignored.

Anchoring (``keep_first_frame``, default True): the band signal is referenced to the first
frame, ``B(t) - B(0)``, so the first (onset) frame is returned unchanged and the amplified
displacement of frame t is ``alpha`` times its band-limited displacement *from the onset*.
This only moves the constant (DC) reference from the clip mean to the first frame, so every
displacement between two frames is the same as without anchoring; but classic EVM
(``keep_first_frame=False``) also distorts the onset frame by ``-alpha`` times the clip's mean
displacement, which for a micro-expression (displaced for most of the onset..offset course)
breaks the first-order approximation on the very frame that flow views use as reference.

Defaults for micro-expressions: ``alpha=10``, ``lambda_c=16`` (Wu et al.'s setting for subtle
motion), ``levels=4``, ideal band ``[0.4, 15] Hz``. An onset->apex rise of a micro-expression
lasts ~0.05-0.25 s, so its motion lies well below 15 Hz; for a clip of the usual length
(T frames at fps, frequency resolution fps/T >= 0.4 Hz) the low edge only removes the DC term,
so the band keeps the whole onset->apex displacement and drops frame-to-frame noise above
15 Hz. For frames sampled at a low effective rate (fps/2 <= 15 Hz) the ideal band passes
everything but the mean. Paper 004 gives no values.

Validity: the first-order approximation needs ``(1 + alpha_l) delta < lambda / 8`` at every
level. Apex displacements of real micro-expressions (1-3 px on 128-280 px faces) exceed it at
fine levels for any useful alpha; ``lambda_c`` protects the fine levels, so fine skin texture
keeps its true motion while coarse structures move ``(1 + alpha)`` times more.

Colour frames are magnified per channel with the same factors.
"""

from __future__ import annotations

import logging
from typing import Literal

import cv2
import numpy as np

from merkit.errors import ConfigError, PreprocessError, check_choice

log = logging.getLogger(__name__)

TemporalFilter = Literal["ideal", "iir", "onset"]
TEMPORAL_FILTERS: tuple[str, ...] = ("ideal", "iir", "onset")


def max_levels(height: int, width: int) -> int:
    """The most band-pass levels a (height, width) image allows: halving (rounding up) while
    the residual keeps at least 2 pixels along each side."""
    levels, h, w = 0, height, width
    while (h + 1) // 2 >= 2 and (w + 1) // 2 >= 2:
        h, w = (h + 1) // 2, (w + 1) // 2
        levels += 1
    return levels


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of one image.

    Args:
        image: (H, W) or (H, W, C) float32.
        levels: number of band-pass levels, 0 <= levels <= :func:`max_levels`.

    Returns:
        ``levels + 1`` float32 arrays: band-pass levels, finest first (level l has size
        ceil(H / 2**l) x ceil(W / 2**l)), then the low-pass residual.
    """
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape[:2]
    if not 0 <= levels <= max_levels(h, w):
        raise ConfigError(f"a {h}x{w} image allows 0..{max_levels(h, w)} pyramid levels, got {levels}")
    pyramid, current = [], image
    for _ in range(levels):
        smaller = cv2.pyrDown(current)
        up = cv2.pyrUp(smaller, dstsize=(current.shape[1], current.shape[0]))
        pyramid.append(current - up.reshape(current.shape))
        current = smaller.reshape(smaller.shape[:2] + current.shape[2:])
    pyramid.append(current)
    return pyramid


def reconstruct(pyramid: list[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`laplacian_pyramid` (exact up to float32 round-off)."""
    image = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        up = cv2.pyrUp(image, dstsize=(band.shape[1], band.shape[0]))
        image = band + up.reshape(band.shape)
    return image


def level_alphas(alpha: float, lambda_c: float | None, levels: int) -> np.ndarray:
    """Amplification of each pyramid level (see the module docstring).

    Returns:
        (levels + 1,) float64: band-pass levels finest first, then the residual.
    """
    if alpha < 0:
        raise ConfigError(f"magnification alpha must be >= 0, got {alpha}")
    wavelengths = 2.0 ** (np.arange(levels + 1) + 1)
    if not lambda_c:
        return np.full(levels + 1, float(alpha))
    if lambda_c < 0:
        raise ConfigError(f"lambda_c must be > 0 (or None for no cut-off), got {lambda_c}")
    return np.minimum(alpha, np.maximum(0.0, wavelengths / lambda_c * (1.0 + alpha) - 1.0))


def temporal_filter(
    signal: np.ndarray,
    fps: float,
    low_hz: float,
    high_hz: float,
    filter: TemporalFilter = "ideal",
    order: int = 1,
) -> np.ndarray:
    """Temporal filter of a stack of coefficients along axis 0 (see the module docstring).

    Args:
        signal: (T, ...) float32.
        fps: frame rate of the stack. low_hz, high_hz: pass band (``ideal``, ``iir``).
        filter: ``ideal``, ``iir`` or ``onset``. order: Butterworth order (``iir``).

    Returns:
        (T, ...) float32 band signal ``B``.
    """
    signal = np.asarray(signal, dtype=np.float32)
    length = signal.shape[0]
    if filter == "onset":
        return signal - signal[:1]
    if filter == "ideal":
        mirrored = np.concatenate([signal, signal[::-1]], axis=0)
        spectrum = np.fft.rfft(mirrored, axis=0)
        frequencies = np.fft.rfftfreq(2 * length, d=1.0 / fps)
        keep = (frequencies > 0) & (frequencies >= low_hz) & (frequencies <= high_hz)
        if not keep.any():
            log.warning("magnification: no frequency of a %d-frame clip at %.1f fps (resolution %.1f Hz) lies in "
                        "the %.1f-%.1f Hz band; the clip is left unmagnified (a longer clip or a wider band helps)",
                        length, fps, fps / (2 * length), low_hz, high_hz)
        spectrum[~keep] = 0
        return np.fft.irfft(spectrum, n=2 * length, axis=0)[:length].astype(np.float32)
    if filter == "iir":
        from scipy.signal import butter, sosfiltfilt

        sos = butter(order, [low_hz, high_hz], btype="bandpass", fs=fps, output="sos")
        padlen = min(3 * (2 * len(sos) + 1), length - 1)
        return sosfiltfilt(sos, signal, axis=0, padlen=padlen).astype(np.float32)
    raise ConfigError(f"unknown temporal filter {filter!r}; expected one of {TEMPORAL_FILTERS}")


def magnify(
    frames: np.ndarray,
    fps: float,
    alpha: float = 10.0,
    low_hz: float = 0.4,
    high_hz: float = 15.0,
    levels: int = 4,
    lambda_c: float | None = 16.0,
    filter: TemporalFilter = "ideal",
    order: int = 1,
    keep_first_frame: bool = True,
) -> np.ndarray:
    """Eulerian motion magnification of a clip.

    Args:
        frames: (T, H, W) grey or (T, H, W, C) frames, T >= 2; uint8 in [0, 255] or float.
        fps: frame rate of ``frames`` (for sampled frames, the effective rate).
        alpha: amplification factor (motion becomes ``(1 + alpha)`` times larger).
        low_hz, high_hz: temporal pass band in Hz (``ideal``, ``iir``).
        levels: band-pass pyramid levels; capped at :func:`max_levels` for frames too small
            to hold them (logged at debug level).
        lambda_c: spatial cut-off wavelength in input pixels (None: no attenuation).
        filter: ``ideal`` (FFT band-pass), ``iir`` (zero-phase Butterworth) or ``onset``
            (relative to the first frame).
        order: Butterworth order for ``iir``.
        keep_first_frame: reference the band to the first frame (see the module docstring).

    Returns:
        Magnified frames of the same shape and dtype. uint8 output is rounded and clipped to
        [0, 255]; float output is not clipped (magnified values may leave the input range).

    Raises:
        ConfigError: bad fps, band, alpha, lambda_c, levels or filter.
        PreprocessError: frames are not a (T, H, W[, C]) clip with T >= 2.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[0] < 2:
        raise PreprocessError(f"magnify expects (T, H, W) or (T, H, W, C) frames with T >= 2, got shape {frames.shape}")
    if frames.dtype != np.uint8 and not np.issubdtype(frames.dtype, np.floating):
        raise PreprocessError(f"magnify expects uint8 or float frames, got dtype {frames.dtype}")
    if fps <= 0:
        raise ConfigError(f"fps must be > 0, got {fps}")
    check_choice("temporal filter", filter, TEMPORAL_FILTERS)
    if filter == "ideal" and not 0 <= low_hz < high_hz:
        raise ConfigError(f"ideal band needs 0 <= low_hz < high_hz, got [{low_hz}, {high_hz}]")
    if filter == "iir" and not 0 < low_hz < high_hz < fps / 2:
        raise ConfigError(f"iir band needs 0 < low_hz < high_hz < fps/2 = {fps / 2}, got [{low_hz}, {high_hz}]")
    if levels < 0:
        raise ConfigError(f"levels must be >= 0, got {levels}")
    height, width = frames.shape[1:3]
    if levels > max_levels(height, width):
        log.debug("magnify: %dx%d frames hold %d pyramid levels, not %d", height, width, max_levels(height, width), levels)
        levels = max_levels(height, width)
    alphas = level_alphas(alpha, lambda_c, levels)

    clip = frames.astype(np.float32)
    pyramids = [laplacian_pyramid(frame, levels) for frame in clip]
    bands = []
    for level, level_alpha in enumerate(alphas):
        stack = np.stack([pyramid[level] for pyramid in pyramids])
        if level_alpha == 0:
            bands.append(np.zeros_like(stack))
        else:
            band = temporal_filter(stack, fps, low_hz, high_hz, filter, order)
            if keep_first_frame:
                band -= band[:1]
            bands.append(level_alpha * band)
    amplified = np.stack([reconstruct([band[t] for band in bands]) for t in range(len(clip))])
    magnified = clip + amplified.reshape(clip.shape)
    if frames.dtype == np.uint8:
        return np.clip(np.round(magnified), 0, 255).astype(np.uint8)
    return magnified.astype(frames.dtype)
