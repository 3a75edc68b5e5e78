"""Optical flow, optical strain and the flow views built from them.

Convention (OpenCV's): a flow ``(H, W, 2)`` float32 holds ``(u, v)`` per pixel such that
``prev[y, x] ~ next[y + v, x + u]``; ``u`` is horizontal (along x, columns), ``v`` vertical
(along y, rows), both in pixels of the image the flow was computed on.

Images are numpy arrays, grey ``(H, W)`` or RGB ``(H, W, 3)``, uint8 in [0, 255] or float in
[0, 1] (merkit's view convention). Float values slightly outside [0, 1] (e.g. after Eulerian
magnification) are clipped to [0, 1]; a float image with values above 8 is taken for a 0-255
image and raises :class:`PreprocessError` rather than being clipped to white.

Methods:
    ``tvl1``: Dual TV-L1 (Zach et al. 2007; ``cv2.optflow.DualTVL1OpticalFlow``), the flow of
        paper 004 and of most MER work. Computed on float32 grey in [0, 1], so float inputs
        (magnified frames) keep their sub-grey-level precision. Slow (~0.2 s per 128x128 pair).
    ``dis``: Dense Inverse Search (Kroeger et al. 2016; ``cv2.DISOpticalFlow``) with the
        ``medium`` preset (8x8 patches, stride 3, variational refinement) refined down to the
        full resolution (``finest_scale=0`` instead of the preset's coarser one). Micro
        motions are sub-pixel and local: on SynthME apex frames (128 px faces) stopping at
        scale 1 doubles the endpoint error (0.17 vs 0.08 px, TV-L1 0.08 px) for ~3x less time;
        at scale 0 DIS is still ~20x faster than TV-L1. Works on uint8 (float input is rounded
        to 256 grey levels).
    ``farneback``: polynomial-expansion flow (Farneback 2003) with OpenCV's usual parameters
        (pyr_scale 0.5, 3 levels, 15 px window, 3 iterations, poly_n 5, poly_sigma 1.2), uint8.

Keyword parameters passed to :func:`optical_flow` override these defaults (names below).
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import cv2
import numpy as np

from merkit.errors import ConfigError, PreprocessError, check_choice

FlowMethod = Literal["tvl1", "dis", "farneback"]
FLOW_METHODS: tuple[str, ...] = ("tvl1", "dis", "farneback")

# snake_case parameter -> OpenCV setter, per method
_TVL1_SETTERS = {
    "tau": "setTau",
    "lambda": "setLambda",
    "lambda_": "setLambda",
    "theta": "setTheta",
    "gamma": "setGamma",
    "nscales": "setScalesNumber",
    "warps": "setWarpingsNumber",
    "epsilon": "setEpsilon",
    "inner_iterations": "setInnerIterations",
    "outer_iterations": "setOuterIterations",
    "scale_step": "setScaleStep",
    "median_filtering": "setMedianFiltering",
}
_DIS_SETTERS = {
    "finest_scale": "setFinestScale",
    "patch_size": "setPatchSize",
    "patch_stride": "setPatchStride",
    "gradient_descent_iterations": "setGradientDescentIterations",
    "variational_refinement_iterations": "setVariationalRefinementIterations",
    "variational_refinement_alpha": "setVariationalRefinementAlpha",
    "variational_refinement_delta": "setVariationalRefinementDelta",
    "variational_refinement_gamma": "setVariationalRefinementGamma",
    "use_mean_normalization": "setUseMeanNormalization",
    "use_spatial_propagation": "setUseSpatialPropagation",
}
_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
_FARNEBACK_DEFAULTS: dict[str, Any] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}

# One solver object per (method, parameters) per thread: OpenCV's solvers keep internal
# buffers and are not safe to share between threads; processes each get their own module.
_solvers = threading.local()


def _solver(method: str, params: dict[str, Any]) -> Any:
    cache: dict = _solvers.__dict__.setdefault("cache", {})
    key = (method, tuple(sorted(params.items())))
    if key in cache:
        return cache[key]
    if method == "tvl1":
        setters = _TVL1_SETTERS
        solver = cv2.optflow.DualTVL1OpticalFlow_create()
        options = params
    else:
        setters = _DIS_SETTERS
        options = {"finest_scale": 0, **params}
        preset = options.pop("preset", "medium")
        check_choice("DIS preset", preset, sorted(_DIS_PRESETS))
        solver = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
    for name, value in options.items():
        if name not in setters:
            allowed = sorted(setters) + (["preset"] if method == "dis" else [])
            raise ConfigError(f"{method} flow has no parameter {name!r}; expected one of {allowed}")
        getattr(solver, setters[name])(value)
    cache[key] = solver
    return solver


# float pixels above this are a 0-255 image passed as float, not overshoot of [0, 1]
_FLOAT_SCALE_LIMIT = 8.0


def to_gray_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Grey float32 image in [0, 1] from a uint8 or float, grey or RGB image.

    Args:
        image: (H, W), (H, W, 1) or (H, W, 3) RGB; uint8 in [0, 255] or float in [0, 1].
        name: what the image is, for error messages.

    Returns:
        (H, W) float32 in [0, 1] (float inputs are clipped to [0, 1]).

    Raises:
        PreprocessError: wrong shape, dtype, or a float image on a 0-255 scale.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise PreprocessError(f"{name}: expected a (H, W) grey or (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return gray.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise PreprocessError(f"{name}: expected uint8 or float pixels, got dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if float(image.max()) > _FLOAT_SCALE_LIMIT:
        raise PreprocessError(
            f"{name}: float images must hold values in [0, 1], got a maximum of {float(image.max()):.4g} "
            "(pass uint8, or divide a 0-255 image by 255)"
        )
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.clip(gray, 0.0, 1.0)


def _gray_uint8(gray: np.ndarray) -> np.ndarray:
    return np.round(gray * 255.0).astype(np.uint8)


def optical_flow(prev: np.ndarray, next: np.ndarray, method: FlowMethod = "tvl1", **params: Any) -> np.ndarray:
    """Dense optical flow from ``prev`` to ``next``.

    Args:
        prev, next: images of the same (H, W); grey or RGB, uint8 or float in [0, 1].
        method: ``tvl1``, ``dis`` or ``farneback`` (see the module docstring).
        **params: method parameters. tvl1: ``tau, lambda_ (or "lambda"), theta, gamma,
            nscales, warps, epsilon, inner_iterations, outer_iterations, scale_step,
            median_filtering``; dis: ``preset`` (ultrafast|fast|medium, default medium),
            ``finest_scale`` (default 0), ``patch_size, patch_stride, gradient_descent_iterations,
            variational_refinement_iterations|alpha|delta|gamma, use_mean_normalization,
            use_spatial_propagation``; farneback: ``pyr_scale, levels, winsize, iterations,
            poly_n, poly_sigma, flags``.

    Returns:
        (H, W, 2) float32 (u, v) with ``prev[y, x] ~ next[y + v, x + u]``.

    Raises:
        ConfigError: unknown method or parameter.
        PreprocessError: images of different sizes or not images.
    """
    check_choice("optical-flow method", method, FLOW_METHODS)
    prev_gray = to_gray_float(prev, "prev")
    next_gray = to_gray_float(next, "next")
    if prev_gray.shape != next_gray.shape:
        raise PreprocessError(f"optical flow needs images of one size, got {prev_gray.shape} and {next_gray.shape}")
    if method == "tvl1":
        flow = _solver("tvl1", params).calc(prev_gray, next_gray, None)
    elif method == "dis":
        flow = _solver("dis", params).calc(_gray_uint8(prev_gray), _gray_uint8(next_gray), None)
    else:
        unknown = set(params) - set(_FARNEBACK_DEFAULTS)
        if unknown:
            raise ConfigError(f"farneback flow has no parameter {sorted(unknown)}; expected {sorted(_FARNEBACK_DEFAULTS)}")
        p = {**_FARNEBACK_DEFAULTS, **params}
        flow = cv2.calcOpticalFlowFarneback(
            _gray_uint8(prev_gray), _gray_uint8(next_gray), None,
            p["pyr_scale"], p["levels"], p["winsize"], p["iterations"], p["poly_n"], p["poly_sigma"], p["flags"],
        )
    return np.asarray(flow, dtype=np.float32)


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Magnitude of the optical strain tensor of a flow field.

    With ``u_x = du/dx`` etc. (central differences inside, one-sided at the border, unit pixel
    spacing; ``np.gradient``), the infinitesimal strain tensor is
    ``E = [[u_x, (u_y + v_x)/2], [(u_y + v_x)/2, v_y]]`` and the returned magnitude is its
    Frobenius norm::

        strain = sqrt(u_x**2 + v_y**2 + 0.5 * (u_y + v_x)**2)

    (the form used by STSTNet / Liong et al.: ``sqrt(e_xx^2 + e_yy^2 + e_xy^2 + e_yx^2)``).
    Strain is dimensionless and unchanged when the image and the flow are scaled together.

    Args:
        flow: (H, W, 2) (u, v); H, W >= 2.

    Returns:
        (H, W) float32.
    """
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2 or min(flow.shape[:2]) < 2:
        raise PreprocessError(f"optical strain needs a (H, W, 2) flow with H, W >= 2, got shape {flow.shape}")
    u_y, u_x = np.gradient(flow[..., 0])
    v_y, v_x = np.gradient(flow[..., 1])
    return np.sqrt(u_x**2 + v_y**2 + 0.5 * (u_y + v_x) ** 2).astype(np.float32)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def resize_flow(flow: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a flow field to ``size`` = (h, w), scaling u by w/W and v by h/H.

    Area averaging when shrinking, bilinear when enlarging. The result is the flow expressed
    in pixels of the resized images.

    Args:
        flow: (H, W, 2). size: int or (h, w).

    Returns:
        (h, w, 2) float32.
    """
    h, w = _size_hw(size)
    height, width = flow.shape[:2]
    if (h, w) == (height, width):
        return np.asarray(flow, dtype=np.float32).copy()
    interpolation = cv2.INTER_AREA if h <= height and w <= width else cv2.INTER_LINEAR
    resized = cv2.resize(np.asarray(flow, dtype=np.float32), (w, h), interpolation=interpolation)
    resized[..., 0] *= w / width
    resized[..., 1] *= h / height
    return resized


def flow_view(
    onset: np.ndarray,
    apex: np.ndarray,
    method: FlowMethod = "tvl1",
    size: int | tuple[int, int] | None = None,
    **params: Any,
) -> np.ndarray:
    """The ``flow`` view: onset->apex flow u, v and optical strain.

    The flow is computed at the images' own resolution (where the micro motion is largest in
    pixels), then resized to ``size`` with u, v rescaled to pixels of the output grid
    (:func:`resize_flow`). The strain is computed from the resized flow, so the three
    channels describe one field on one grid.

    Args:
        onset, apex: images of one size (see :func:`optical_flow`).
        method: flow method. size: output (h, w) or int; None keeps the input size.
        **params: flow method parameters.

    Returns:
        (3, h, w) float32: u, v (pixels at h x w), strain.
    """
    flow = optical_flow(onset, apex, method, **params)
    if size is not None:
        flow = resize_flow(flow, size)
    return np.stack([flow[..., 0], flow[..., 1], optical_strain(flow)]).astype(np.float32)


#: side of the MEGC2019 release's flow images
RELEASE_FLOW_SIZE = 28


def megc_flow_image(flow: np.ndarray, strain: np.ndarray | None = None,
                    size: int | tuple[int, int] = RELEASE_FLOW_SIZE) -> np.ndarray:
    """The MEGC2019 (STSTNet-style) released flow image: 28 x 28 x 3 uint8.

    Channels, in this order: 0 = u (horizontal flow), 1 = v (vertical flow), 2 = optical
    strain. Each channel is resized to ``size`` (area averaging when shrinking) and then
    min-max scaled to 0..255 on its own, per image: ``round(255 * (c - min c) / (max c - min c))``;
    a constant channel becomes 0. The per-image scaling discards the absolute magnitude, as the
    released images do.

    Args:
        flow: (H, W, 2) (u, v). strain: (H, W); None computes :func:`optical_strain` of ``flow``
            at its own resolution. size: int or (h, w).

    Returns:
        (h, w, 3) uint8.
    """
    flow = np.asarray(flow, dtype=np.float32)
    if strain is None:
        strain = optical_strain(flow)
    strain = np.asarray(strain, dtype=np.float32)
    if strain.shape != flow.shape[:2]:
        raise PreprocessError(f"strain of shape {strain.shape} does not match flow of shape {flow.shape}")
    h, w = _size_hw(size)
    stacked = np.dstack([flow, strain])
    interpolation = cv2.INTER_AREA if h <= stacked.shape[0] and w <= stacked.shape[1] else cv2.INTER_LINEAR
    resized = cv2.resize(stacked, (w, h), interpolation=interpolation)
    low = resized.min(axis=(0, 1), keepdims=True)
    span = resized.max(axis=(0, 1), keepdims=True) - low
    scaled = np.where(span > 0, (resized - low) / np.where(span > 0, span, 1.0), 0.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def flow_sequence(
    frames: np.ndarray,
    onset_index: int = 0,
    method: FlowMethod = "tvl1",
    size: int | tuple[int, int] | None = None,
    **params: Any,
) -> np.ndarray:
    """The ``flow_seq`` view: flow from the onset frame to every frame, with strain.

    Args:
        frames: (T, H, W) grey or (T, H, W, 3) RGB, uint8 or float in [0, 1].
        onset_index: position of the reference (onset) frame in ``frames``.
        method, size, **params: as in :func:`flow_view`.

    Returns:
        (T, 3, h, w) float32; entry t is ``flow_view(frames[onset_index], frames[t])``, and the
        onset's own entry is exactly zero.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or len(frames) == 0:
        raise PreprocessError(f"flow_sequence expects (T, H, W[, 3]) frames, got shape {frames.shape}")
    if not 0 <= onset_index < len(frames):
        raise PreprocessError(f"onset_index {onset_index} outside the {len(frames)} frames")
    h, w = _size_hw(size) if size is not None else frames.shape[1:3]
    out = np.zeros((len(frames), 3, h, w), dtype=np.float32)
    for t in range(len(frames)):
        if t != onset_index:
            out[t] = flow_view(frames[onset_index], frames[t], method, size, **params)
    return out
