"""Depth streams for the ``depth_seq`` view (MADV-Net, paper 002, feeds a depth video).

Three sources:

``dataset``
    Depth frames recorded with the clip (CAS(ME)^3 keeps them in a ``depth/`` folder next to
    ``color/``; a :class:`~merkit.data.Sample` carries them as ``sample.depth``). 16-bit or
    8-bit single-channel PNG, or greyscale JPG. Values are sensor distances: small = near,
    0 = no measurement.
``synthme``
    SynthME's ground-truth depth, read from the clip's ``synthme_truth.npz`` that the generator
    wrote (:mod:`merkit.data.synthme.truth`; relative, near = large, background 0; 14-bit).
``depth-anything:<weights dir>`` or ``depth-anything``
    Depth Anything (paper 002 uses it to turn RGB clips into "3D video") through Hugging Face
    ``transformers``, from a local checkpoint directory; relative inverse depth (near = large).
    Plain ``depth-anything`` reads the directory from ``$MERKIT_DEPTH_ANYTHING`` (so a shipped
    config can name the source without a machine's path; MADV-Net's paper config does, as the
    source for the RGB-only datasets). Nothing is downloaded: the user supplies the checkpoint.
    ``transformers`` is an optional extra (``pip install merkit[depth]``) imported on first use.

Normalisation rule (every source, :func:`normalise_depth`): one affine map per CLIP, so depth
changes between frames survive: valid values (non-zero for sensor depth) are mapped so that
the 1st percentile of the clip's valid values goes to the far end and the 99th to the near end,
clipped to [0, 1], with **1 = nearest**; invalid pixels are 0 (far). ``per="frame"`` maps each
frame on its own instead (Depth Anything's relative output has a free scale and shift per
frame, which per-clip maps keep as flicker).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np

from merkit.data.synthme.truth import TRUTH_FILE, SynthTruth, read_truth
from merkit.errors import ConfigError, MissingFramesError, PreprocessError, WeightsNotFoundError, check_choice

log = logging.getLogger(__name__)

DEPTH_ANYTHING_PREFIX = "depth-anything:"
DEPTH_ANYTHING_ENV = "MERKIT_DEPTH_ANYTHING"


def resolve_depth_source(source: str) -> str:
    """``depth-anything`` -> ``depth-anything:<$MERKIT_DEPTH_ANYTHING>``; other sources unchanged.

    Raises:
        WeightsNotFoundError: ``depth-anything`` without the environment variable.
    """
    if source != DEPTH_ANYTHING_PREFIX[:-1]:
        return source
    import os

    weights = os.environ.get(DEPTH_ANYTHING_ENV, "").strip()
    if not weights:
        raise WeightsNotFoundError(
            f"depth source 'depth-anything' reads the checkpoint directory from ${DEPTH_ANYTHING_ENV}, which is not set. "
            "Download a Depth Anything checkpoint in Hugging Face format (e.g. LiheYoung/depth-anything-small-hf) "
            f"and set {DEPTH_ANYTHING_ENV}=<its directory>, or write views.depth: '{DEPTH_ANYTHING_PREFIX}<directory>'; "
            "for CAS(ME)^3 (recorded depth) use views.depth: dataset. merkit downloads nothing")
    return DEPTH_ANYTHING_PREFIX + weights


def normalise_depth(
    depth: np.ndarray,
    *,
    near: Literal["small", "large"],
    zero_is_invalid: bool = True,
    percentiles: tuple[float, float] = (1.0, 99.0),
    per: Literal["clip", "frame"] = "clip",
) -> np.ndarray:
    """Map raw depth to [0, 1], 1 = nearest (see the module docstring for the rule).

    Args:
        depth: (T, H, W) raw values.
        near: whether small values (distances) or large values (disparity, relative inverse
            depth) are near the camera.
        zero_is_invalid: 0 marks a missing measurement (depth sensors, SynthME background).
        percentiles: (low, high) percentiles of the valid values taken as the range.
        per: one map for the whole clip or one per frame.

    Returns:
        (T, H, W) float32 in [0, 1].

    Raises:
        PreprocessError: no valid value in the clip (or, per frame, in a frame).
    """
    check_choice("normalise_depth: per", per, ("clip", "frame"))
    check_choice("normalise_depth: near", near, ("small", "large"))
    depth = np.asarray(depth, dtype=np.float64)
    if per == "frame":
        return np.stack(
            [normalise_depth(frame[None], near=near, zero_is_invalid=zero_is_invalid, percentiles=percentiles)[0] for frame in depth]
        )
    valid = np.isfinite(depth) & ((depth != 0) if zero_is_invalid else True)
    if not valid.any():
        raise PreprocessError("depth frames hold no valid (finite, non-zero) value")
    low, high = np.percentile(depth[valid], percentiles)
    span = high - low
    if span <= 0:
        scaled = np.ones_like(depth)
    elif near == "small":
        scaled = (high - depth) / span
    else:
        scaled = (depth - low) / span
    return np.where(valid, np.clip(scaled, 0.0, 1.0), 0.0).astype(np.float32)


def read_depth_image(path: str | Path) -> np.ndarray:
    """One depth image as (H, W) float32 raw values (16-bit and 8-bit kept as read).

    A 3-channel file is accepted only when its channels agree (a grey image saved as JPG);
    colour-mapped depth visualisations cannot be inverted.

    Raises:
        MissingFramesError: the file is missing or unreadable.
        PreprocessError: a colour-mapped (3 different channels) image.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise MissingFramesError(f"{path}: missing or not a readable depth image")
    if image.ndim == 3:
        channels = image[..., :3].astype(np.int32)
        if np.abs(channels - channels[..., :1]).max() > 8:
            raise PreprocessError(
                f"{path}: colour depth image; expected a single-channel 8/16-bit depth map"
            )
        image = image[..., 0]
    return image.astype(np.float32)


def read_depth_clip(
    paths: Sequence[str | Path],
    *,
    near: Literal["small", "large"] = "small",
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> np.ndarray:
    """Read and normalise a clip's depth frames (dataset source).

    Args:
        paths: depth image files in frame order.
        near: ``small`` for sensor distances (CAS(ME)^3), ``large`` for disparity-like maps.

    Returns:
        (T, H, W) float32 in [0, 1], 1 = nearest, 0 = far or no measurement.

    Raises:
        MissingFramesError: a file is missing; PreprocessError: frames of different sizes,
        colour maps, or no valid value.
    """
    frames = [read_depth_image(p) for p in paths]
    if len({f.shape for f in frames}) > 1:
        raise PreprocessError(f"{Path(paths[0]).parent}: depth frames differ in size")
    try:
        return normalise_depth(np.stack(frames), near=near, percentiles=percentiles)
    except PreprocessError as error:
        raise PreprocessError(f"{Path(paths[0]).parent}: {error}") from None


class DepthAnythingEstimator:
    """Depth Anything from a local Hugging Face checkpoint (``config.json``, weights and
    ``preprocessor_config.json``, e.g. a downloaded ``depth-anything-small-hf``).

    Nothing is downloaded: the directory must exist. The model runs on ``device`` in eval mode,
    ``batch_size`` frames at a time; its output (relative inverse depth at the processor's
    resolution) is resized bilinearly back to the frame size.

    Raises (on construction):
        WeightsNotFoundError: ``transformers`` is not installed, or the directory holds no
            checkpoint.
    """

    def __init__(self, weights_dir: str | Path, *, device: str = "cpu", batch_size: int = 8):
        weights_dir = Path(weights_dir).expanduser()
        what = (
            "Depth Anything needs a local directory with a checkpoint in Hugging Face format "
            "(config.json, model.safetensors or pytorch_model.bin, preprocessor_config.json), "
            "e.g. a downloaded LiheYoung/depth-anything-small-hf, and the optional extra: "
            "pip install merkit[depth]"
        )
        if not (weights_dir / "config.json").is_file():
            raise WeightsNotFoundError(f"{weights_dir}: no config.json. {what}")
        try:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        except ImportError:
            raise WeightsNotFoundError(f"transformers is not installed. {what}") from None
        try:
            self.processor = AutoImageProcessor.from_pretrained(weights_dir, local_files_only=True, use_fast=False)
            self.model = AutoModelForDepthEstimation.from_pretrained(weights_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise WeightsNotFoundError(f"{weights_dir}: cannot load a checkpoint ({error}). {what}") from None
        self.model.to(device).eval()
        self.device = device
        self.batch_size = int(batch_size)
        self.weights_dir = weights_dir

    def predict_raw(self, frames: np.ndarray) -> np.ndarray:
        """Relative inverse depth (near = large, arbitrary scale).

        Args:
            frames: (T, H, W, 3) uint8 RGB.

        Returns:
            (T, H, W) float32.
        """
        import torch
        import torch.nn.functional as functional

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise PreprocessError(f"Depth Anything expects (T, H, W, 3) RGB frames, got {frames.shape}")
        height, width = frames.shape[1:3]
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), self.batch_size):
                batch = list(frames[start : start + self.batch_size])
                inputs = self.processor(images=batch, return_tensors="pt")
                predicted = self.model(pixel_values=inputs["pixel_values"].to(self.device)).predicted_depth
                resized = functional.interpolate(predicted[:, None], size=(height, width), mode="bilinear", align_corners=False)
                out.append(resized[:, 0].float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def predict(self, frames: np.ndarray, *, per: Literal["clip", "frame"] = "clip") -> np.ndarray:
        """Normalised depth of a clip: (T, H, W, 3) uint8 -> (T, H, W) float32 in [0, 1], 1 = nearest."""
        return normalise_depth(self.predict_raw(frames), near="large", zero_is_invalid=False, per=per)


@functools.lru_cache(maxsize=2)
def _estimator(weights_dir: str) -> DepthAnythingEstimator:
    return DepthAnythingEstimator(weights_dir)


def synth_truth_of(sample) -> SynthTruth:
    """The ground truth of a SynthME sample (every frame's depth and landmarks), read from the
    clip's ``synthme_truth.npz`` (``sample.meta["synthme_truth"]``, set by the synthme loader).

    Raises:
        PreprocessError: the sample does not come from SynthME.
        DatasetError: the file is missing (a SynthME folder written before merkit wrote it:
            regenerate with ``merkit synth``) or unreadable.
    """
    path = sample.meta.get("synthme_truth")
    if path is None:
        raise PreprocessError(
            f"{sample.sample_id}: the 'synthme' source needs a SynthME sample (meta['synthme_truth'] = the clip's "
            f"{TRUTH_FILE}, as the synthme loader sets it)"
        )
    return read_truth(path)


def depth_sequence(
    sample,
    numbers: Sequence[int],
    *,
    size: tuple[int, int],
    source: str = "dataset",
    frames: np.ndarray | None = None,
    transforms: np.ndarray | None = None,
    frame_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The ``depth_seq`` view: depth of the frames ``numbers`` of ``sample``.

    Args:
        sample: the :class:`~merkit.data.Sample`.
        numbers: (T,) dataset frame numbers.
        size: output (h, w).
        source: ``dataset`` (``sample.depth``), ``synthme`` (ground truth),
            ``depth-anything:<weights dir>`` or ``depth-anything`` (``$MERKIT_DEPTH_ANYTHING``).
        frames: (T, H, W, 3) uint8 RGB frames to run Depth Anything on (e.g. the aligned
            course); None: read ``numbers`` from ``sample.frames``.
        transforms: (T, 2, 3) transforms from depth-frame pixels to the output grid of
            ``size`` (an :class:`~merkit.preprocess.face.AlignedClip`'s transforms composed
            with the scaling from its size to ``size``), applied to recorded or synthetic depth
            so it stays registered with aligned frames; None: depth is only resized. Ignored
            for Depth Anything, which runs on ``frames`` as given.
        frame_size: (H, W) of the frames ``transforms`` start from; recorded depth of another
            size (a depth camera's own resolution) is first scaled onto that grid. None: the
            depth frames have the frames' size.

    Returns:
        (T, 1, h, w) float32 in [0, 1], 1 = nearest.

    Raises:
        PreprocessError: the sample has no depth frames for ``dataset``; ConfigError: unknown
        source; WeightsNotFoundError: Depth Anything weights or transformers missing;
        DatasetError: a SynthME clip without its ground-truth file (``synthme``).
    """
    numbers = [int(n) for n in numbers]
    h, w = size
    source = resolve_depth_source(source)
    if source == "dataset":
        if sample.depth is None:
            raise PreprocessError(
                f"{sample.sample_id}: no depth frames; depth source 'dataset' needs a dataset with depth "
                f"(CAS(ME)^3), else use 'synthme' or '{DEPTH_ANYTHING_PREFIX}<weights dir>'"
            )
        depth = read_depth_clip([sample.depth.paths[sample.depth.position(n)] for n in numbers])
    elif source == "synthme":
        truth = synth_truth_of(sample)
        depth = normalise_depth(truth.depth[truth.positions(numbers)], near="large")
    elif source.startswith(DEPTH_ANYTHING_PREFIX):
        if frames is None:
            frames = np.stack([sample.frames.read(n) for n in numbers])
        depth = _estimator(source[len(DEPTH_ANYTHING_PREFIX):]).predict(frames)
        transforms = None  # estimated on the given (already aligned) frames
    else:
        raise ConfigError(
            f"unknown depth source {source!r}; expected 'dataset', 'synthme', 'depth-anything' "
            f"(${DEPTH_ANYTHING_ENV}) or '{DEPTH_ANYTHING_PREFIX}<weights dir>'"
        )
    if transforms is not None:
        from merkit.preprocess.face import compose, resize_transform, warp_clip

        if frame_size is not None and tuple(depth.shape[1:3]) != tuple(frame_size):
            to_frame = resize_transform(depth.shape[1:3], frame_size)
            transforms = np.stack([compose(m, to_frame) for m in np.broadcast_to(transforms, (len(depth), 2, 3))])
        resized = warp_clip(depth, transforms, size)
    else:
        interpolation = cv2.INTER_AREA if depth.shape[1] >= h else cv2.INTER_LINEAR
        resized = np.stack([cv2.resize(d, (w, h), interpolation=interpolation) for d in depth])
    return resized[:, None].astype(np.float32)
