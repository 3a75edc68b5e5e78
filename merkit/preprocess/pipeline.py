"""The preprocess pipeline: build exactly the views a model's input spec names.

``build_views(sample, specs, config)`` turns one :class:`~merkit.data.Sample` into a dict of
float32 arrays (shapes in :mod:`merkit.views`). ``ViewBuilder`` adds an on-disk cache keyed by
sample + view spec + preprocessing config (written atomically, recomputed when the config
changes) and runs over many samples on N worker processes.

Order of steps for a clip: frame course onset..offset -> apex (policy) -> face alignment
(optional, estimated on the onset frame, applied to the whole course) -> magnification
(optional, flow sequences: on the whole, evenly spaced course) -> temporal sampling -> resize /
colour -> flow, depth, AU streams.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from merkit.config import ViewsConfig
from merkit.data.sample import Sample
from merkit.errors import MerkitError, PreprocessError
from merkit.outputs import make_output_dir
from merkit.views import SEQUENCE_VIEWS, ViewSpec

log = logging.getLogger(__name__)

PIPELINE_VERSION = 4  # 2: sampling "interpolate" interpolates the course; 3: <view>_mask and <view>_position; 4: magnify the course, then pick; 5: SynthME depth/landmarks read from synthme_truth.npz (14-bit depth)


@dataclass(frozen=True)
class Course:
    """The frames of a clip from onset to offset, after the face step.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB, frames[0] is the onset frame. Without ``full`` loading
            only the onset and apex frames are read (T = 2, or 1 when they coincide).
        numbers: (T,) dataset frame numbers of ``frames``.
        apex: position of the apex in ``frames``.
        apex_source: how the apex was obtained (``annotated``, ``middle``, ``spotted:<method>``).
        source_size: (H, W) of the dataset's frames.
        transforms: (T, 2, 3) maps from dataset-frame pixels to ``frames``' pixels when the face
            step cropped or aligned them (None without a face step); other per-frame data of
            the clip (depth) is warped with them so that it stays registered with ``frames``.
    """

    frames: np.ndarray
    numbers: np.ndarray
    apex: int
    apex_source: str
    source_size: tuple[int, int]
    transforms: np.ndarray | None = None


def _course_numbers(sample: Sample) -> list[int]:
    source = sample.frames
    first, last = source.position(sample.onset_frame), source.position(sample.offset_frame)
    if last < first:
        raise PreprocessError(f"{sample.sample_id}: offset frame {sample.offset_frame} precedes onset {sample.onset_frame}")
    return list(source.numbers[first : last + 1])


def load_course(sample: Sample, config: ViewsConfig, *, full: bool = True) -> Course:
    """Read the onset..offset frames of ``sample``, resolve its apex, apply the face step.

    Args:
        full: read every frame of the course; otherwise only the onset and apex frames (all
            frames are still read when the apex must be spotted).

    Raises:
        PreprocessError: the apex is needed but missing under the ``annotated`` policy, or the
            face step fails (``FaceNotFoundError``).
    """
    numbers = _course_numbers(sample)
    spotted = config.apex_policy == "spotted"
    frames = np.stack([sample.frames.read(n) for n in numbers]) if full or spotted else None
    apex, source = _resolve_apex(sample, numbers, frames, config)
    if not full:
        keep = sorted({0, apex})
        frames = frames[keep] if frames is not None else np.stack([sample.frames.read(numbers[i]) for i in keep])
        numbers, apex = [numbers[i] for i in keep], keep.index(apex)
    source_size, transforms = (int(frames.shape[1]), int(frames.shape[2])), None
    if config.face == "dlib-box":  # paper 004: the box of dlib's 68 landmarks, cut out as it is
        from merkit.preprocess.face import crop_box_clip

        cropped = crop_box_clip(frames, detector="dlib", box_from="landmarks", sample_id=sample.sample_id)
        frames, transforms = cropped.frames, cropped.transforms
    elif config.face != "none":
        from merkit.preprocess.face import align_clip

        aligned = align_clip(frames, detector=config.face, sample_id=sample.sample_id)
        frames, transforms = aligned.frames, aligned.transforms
    return Course(frames=frames, numbers=np.asarray(numbers), apex=apex, apex_source=source, source_size=source_size,
                  transforms=transforms)


def _resolve_apex(sample: Sample, numbers: list[int], frames: np.ndarray, config: ViewsConfig) -> tuple[int, str]:
    """Apex position in the course under ``config.apex_policy`` (``annotated-or-middle`` is
    ``annotated`` with the middle frame as the fallback for clips without an apex)."""
    from merkit.preprocess.spotting import resolve_apex

    annotated = None
    if sample.apex_frame is not None:
        if sample.apex_frame not in numbers:
            raise PreprocessError(
                f"{sample.sample_id}: apex frame {sample.apex_frame} lies outside onset..offset "
                f"{numbers[0]}..{numbers[-1]}"
            )
        annotated = numbers.index(sample.apex_frame)
    policy = config.apex_policy
    fallback = "middle" if policy == "annotated-or-middle" else None
    return resolve_apex(len(numbers), annotated, "annotated" if fallback else policy, frames=frames,
                        method=config.spotting, fallback=fallback, sample_id=sample.sample_id)


def to_image_view(image: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (C, h, w) float32 in [0, 1] at ``size`` = (h, w)."""
    h, w = size
    interpolation = cv2.INTER_AREA if image.shape[0] >= h else cv2.INTER_LINEAR
    resized = cv2.resize(image, (w, h), interpolation=interpolation)
    if channels == 1:
        resized = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)[..., None]
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0


def sample_positions(course: Course, length: int, config: ViewsConfig, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions into the course (onset first, apex included) per ``config.sampling``, and their times.

    With ``config.fps`` below the clip's rate the course is first resampled to that rate (e.g.
    200 -> 30 Hz). ``uniform`` and ``keyframes`` pick ``length`` positions; ``all`` keeps every
    frame (of the resampled course) when there are at most ``length``, else ``length`` evenly
    spaced ones. The sampled position nearest the apex is replaced by the apex so models that
    need the apex pair (ATM-GCN's global node) always have it.

    Returns:
        ``(positions, times)``: int64 indices into ``course.frames`` (``length`` of them, fewer
        under ``all``) and float32 distances from the onset in frames at the sequence's rate
        (``config.fps`` when it resampled the course, else the clip's ``fps``).
    """
    from merkit.preprocess import sampling

    n = len(course.frames)
    base = np.arange(n)
    ratio = 1.0
    if config.fps is not None and config.fps < fps:
        base = np.asarray(sampling.resample_rate(n, fps, config.fps))
        ratio = config.fps / fps
    if config.sampling == "keyframes":
        chosen = np.asarray(sampling.keyframes_sts(course.frames[base], num=length))
    elif config.sampling == "all" and len(base) <= length:
        chosen = np.arange(len(base))
    else:
        chosen = np.asarray(sampling.uniform_indices(len(base), length))
    positions, times = base[chosen].copy(), chosen.astype(np.float64)
    positions[0], times[0] = 0, 0.0
    if course.apex not in positions:
        nearest = int(np.argmin(np.abs(positions[1:] - course.apex))) + 1
        positions[nearest], times[nearest] = course.apex, course.apex * ratio
        order = np.argsort(positions, kind="stable")
        positions, times = positions[order], times[order]
    return positions, times.astype(np.float32)


def build_views(sample: Sample, specs: Sequence[ViewSpec], config: ViewsConfig) -> dict[str, np.ndarray]:
    """Build the views ``specs`` names for ``sample``.

    Returns:
        dict view name -> float32 array with the shape of :meth:`ViewSpec.shape`. Each sequence
        view ``<name>`` adds ``<name>_mask`` ((T,) bool: real frames; under ``sampling: all`` a
        shorter clip is zero-padded at the end) and ``<name>_position`` ((T,) float32: each
        frame's distance from the onset in frames at the sequence's rate, see
        :func:`sample_positions`; 0 for padding), plus ``apex_index`` (int64 scalar: the apex
        position among the sampled frames).

    Raises:
        PreprocessError: a view cannot be built (message names the sample and the step).
    """
    if sample.meta.get("precomputed_views"):
        return _precomputed_views(sample, specs, config)
    course = load_course(sample, config, full=any(spec.name in SEQUENCE_VIEWS for spec in specs))
    onset, apex = course.frames[0], course.frames[course.apex]
    views: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name == "onset":
            views["onset"] = to_image_view(onset, spec.size, spec.channels)
        elif spec.name == "apex":
            views["apex"] = to_image_view(apex, spec.size, spec.channels)
        elif spec.name == "diff":
            views["diff"] = to_image_view(apex, spec.size, spec.channels) - to_image_view(onset, spec.size, spec.channels)
        elif spec.name in ("flow", "flow_regions"):
            from merkit.preprocess.flow import RELEASE_FLOW_SIZE, flow_view, megc_flow_image, optical_flow

            if config.flow_form == "release":
                image = megc_flow_image(optical_flow(_grey(onset), _grey(apex), config.flow), size=RELEASE_FLOW_SIZE)
                flow = release_flow_view(image.transpose(2, 0, 1).astype(np.float32) / 255.0, spec.size, config)
            else:
                flow = flow_view(_grey(onset), _grey(apex), method=config.flow, size=spec.size).astype(np.float32)
            if spec.name == "flow_regions":
                from merkit.preprocess.regions import flow_regions

                flow = flow_regions(flow, apex, sample_id=sample.sample_id)
            views[spec.name] = flow
        elif spec.name == "au_codes":
            from merkit.preprocess.au import au_code_view

            views["au_codes"] = au_code_view(sample)
        else:
            positions, times = sample_positions(course, spec.length, config, sample.fps)
            if config.sampling == "all" and len(positions) < 2:
                raise PreprocessError(f"{sample.sample_id}: sampling 'all' needs at least two frames from onset to "
                                      f"offset (frames {sample.onset_frame}..{sample.offset_frame} give one)")
            if config.sampling == "interpolate":  # the interpolated frame nearest the apex in time
                step = max(1, len(course.frames) - 1) / (spec.length - 1)
                apex_index = int(round(course.apex / step))
                times = (np.arange(spec.length) * step).astype(np.float32)
            else:
                apex_index = int(np.flatnonzero(positions == course.apex)[0])
            views["apex_index"] = np.asarray(apex_index, dtype=np.int64)
            sequence = _sequence_view(sample, course, positions, spec, config)
            real = len(sequence)
            padding = [(0, spec.length - real)] + [(0, 0)] * (sequence.ndim - 1)
            views[spec.name] = np.pad(sequence, padding)
            views[f"{spec.name}_mask"] = np.arange(spec.length) < real
            views[f"{spec.name}_position"] = np.pad(times[:real], (0, spec.length - real)).astype(np.float32)
    return views


#: views built from the views a release ships: view -> the shipped views it needs
DERIVED_VIEWS: dict[str, tuple[str, ...]] = {"flow_regions": ("flow", "apex")}


def release_views(shipped: Sequence[str]) -> set[str]:
    """The views a release of ready-made ``shipped`` views can give: those plus the
    :data:`DERIVED_VIEWS` whose sources it ships (``flow`` + ``apex`` give ``flow_regions``)."""
    available = set(shipped)
    return available | {name for name, sources in DERIVED_VIEWS.items() if available.issuperset(sources)}


def _precomputed_views(sample: Sample, specs: Sequence[ViewSpec], config: ViewsConfig) -> dict[str, np.ndarray]:
    """Views a release ships ready-made (the MEGC2019 flow format: ``flow`` and ``apex`` images),
    and the views derived from them (:data:`DERIVED_VIEWS`).

    The released flow image is per-image min-max scaled to [0, 1] (see
    :func:`merkit.data.megc2019.read_flow_image`); with ``config.release_flow == "centered"`` its
    u and v channels are shifted by their median (:func:`center_release_flow`). It is resized to
    the spec's size if needed. ``flow_regions`` cuts that flow around the facial points of the
    apex crop.
    """
    from merkit.data.megc2019 import read_flow_image
    from merkit.data.sample import read_image

    available = tuple(sample.meta["precomputed_views"])
    views: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in release_views(available):
            raise PreprocessError(
                f"{sample.sample_id}: view {spec.name!r} is not in this release, which ships only {', '.join(available)}"
            )
        if spec.name in ("flow", "flow_regions"):
            flow = release_flow_view(read_flow_image(sample.meta["flow_image"]), spec.size, config)
            if spec.name == "flow_regions":
                from merkit.preprocess.regions import flow_regions

                flow = flow_regions(flow, read_image(sample.meta["apex_image"]), sample_id=sample.sample_id)
            views[spec.name] = flow
        else:
            views[spec.name] = to_image_view(read_image(sample.meta[f"{spec.name}_image"]), spec.size, spec.channels)
    return views


def release_flow_view(flow: np.ndarray, size: Sequence[int], config: ViewsConfig) -> np.ndarray:
    """A release-form flow image ``(3, h, w)`` in [0, 1] (u, v, strain, each min-max scaled per
    image) as the ``flow`` view: centered if ``config.release_flow == "centered"``
    (:func:`center_release_flow`), then resized to ``size`` (bilinear) if it differs.

    Returns:
        ``(3, *size)`` float32, contiguous.
    """
    if config.release_flow == "centered":
        flow = center_release_flow(flow)
    if flow.shape[1:] != tuple(size):
        h, w = size
        flow = cv2.resize(flow.transpose(1, 2, 0), (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    return np.ascontiguousarray(flow, dtype=np.float32)


def center_release_flow(flow: np.ndarray) -> np.ndarray:
    """A released min-max scaled flow image with u and v shifted so that their median is 0.

    Per-image min-max scaling puts no motion at a different level in every image; the median
    pixel of a face does not move with the expression, so after the shift 0 is no motion. The
    shift commutes with the release's scaling of a mirrored clip: the release holds ``1 - u`` for
    the mirrored u, and ``(1 - u) - median(1 - u) = -(u - median(u))``, so negating the centered u
    (what a horizontal flip does) gives exactly the centered view of the mirrored clip.

    Args:
        flow: ``(3, H, W)`` u, v, strain in [0, 1].

    Returns:
        ``(3, H, W)`` float32: u and v in [-1, 1] with median 0, strain unchanged.
    """
    centered = np.array(flow, dtype=np.float32, copy=True)
    centered[:2] -= np.median(centered[:2].reshape(2, -1), axis=1)[:, None, None]
    return centered


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _interpolated(frames: np.ndarray, length: int) -> np.ndarray:
    from merkit.preprocess.sampling import interpolate_frames

    return np.clip(np.rint(interpolate_frames(frames, length)), 0, 255).astype(np.uint8)


def _sequence_view(sample: Sample, course: Course, positions: np.ndarray, spec: ViewSpec, config: ViewsConfig) -> np.ndarray:
    interpolate = config.sampling == "interpolate"
    if interpolate and spec.name not in ("frames", "flow_seq"):
        raise PreprocessError(f"{sample.sample_id}: sampling 'interpolate' builds the frames and flow_seq views, not "
                              f"{spec.name!r} (its data exists only at recorded frames); use 'uniform' or 'keyframes'")
    frames = _interpolated(course.frames, spec.length) if interpolate else course.frames[positions]
    if spec.name == "frames":
        return np.stack([to_image_view(f, spec.size, spec.channels) for f in frames])
    if spec.name == "flow_seq":
        from merkit.preprocess.flow import flow_sequence

        if config.magnify is None:
            grey = np.stack([_grey(f) for f in frames])
        else:
            # Eulerian magnification filters every pixel over time, so it runs on the evenly
            # spaced course at the clip's frame rate, before frames are picked: key frames
            # (paper 004) or rounded uniform picks are unevenly spaced in time, and a temporal
            # band-pass over them would read the wrong frequencies.
            from merkit.preprocess.magnify import magnify

            grey_course = magnify(np.stack([_grey(f) for f in course.frames]), fps=sample.fps, alpha=config.magnify)
            grey = _interpolated(grey_course, spec.length) if interpolate else grey_course[positions]
        return flow_sequence(grey, onset_index=0, method=config.flow, size=spec.size).astype(np.float32)
    if spec.name == "depth_seq":
        from merkit.preprocess.depth import depth_sequence
        from merkit.preprocess.face import compose, resize_transform

        transforms = None
        if course.transforms is not None:  # dataset frame -> aligned course -> view grid
            to_view = resize_transform(course.frames.shape[1:3], spec.size)
            transforms = np.stack([compose(to_view, course.transforms[p]) for p in positions])
        return depth_sequence(sample, course.numbers[positions], size=spec.size, source=config.depth, frames=frames,
                              transforms=transforms, frame_size=course.source_size).astype(np.float32)
    if spec.name == "au":
        from merkit.preprocess.au import au_view

        return au_view(sample, course.frames, positions, source=config.au, transforms=course.transforms).astype(np.float32)
    raise PreprocessError(f"{sample.sample_id}: no builder for view {spec.name!r}")


# --------------------------------------------------------------------------- cache + workers


def cache_key(sample: Sample, specs: Sequence[ViewSpec], config: ViewsConfig) -> str:
    """Hash of everything a sample's views depend on: files, annotation, specs, config, version."""
    if sample.meta.get("precomputed_views"):
        paths = [Path(sample.meta[f"{name}_image"]) for name in sample.meta["precomputed_views"]]
    else:
        paths = [sample.frames.paths[sample.frames.position(n)] for n in _course_numbers(sample)]
    files = []
    for path in paths:
        stat = path.stat()
        files.append((str(path), stat.st_size, int(stat.st_mtime)))
    settings = config.model_dump(mode="json")
    if any(s.name == "depth_seq" for s in specs):  # the checkpoint behind 'depth-anything' ($MERKIT_DEPTH_ANYTHING)
        from merkit.preprocess.depth import resolve_depth_source

        settings["depth"] = resolve_depth_source(config.depth)
    payload = {
        "version": PIPELINE_VERSION,
        "sample": [sample.sample_id, sample.onset_frame, sample.apex_frame, sample.offset_frame, sample.fps,
                   sample.meta.get("source_format")],
        "files": files,
        "specs": [asdict(s) for s in specs],
        "config": settings,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _save_atomic(path: Path, views: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **views)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _build_cached(args: tuple[Sample, tuple[ViewSpec, ...], ViewsConfig, str | None]) -> dict[str, np.ndarray] | str:
    sample, specs, config, cache_dir = args
    try:
        if cache_dir is None:
            return build_views(sample, specs, config)
        path = Path(cache_dir) / f"{cache_key(sample, specs, config)}.npz"
        if path.is_file():
            try:
                with np.load(path) as data:
                    return {k: data[k] for k in data.files}
            except (OSError, ValueError, EOFError):  # a damaged cache entry is rebuilt
                log.warning("rebuilding damaged cache entry %s", path)
        views = build_views(sample, specs, config)
        _save_atomic(path, views)
        return views
    except MerkitError as err:
        return f"{type(err).__name__}: {err}"


class ViewBuilder:
    """Build views for many samples with a cache and worker processes.

    Args:
        specs: the model's input spec.
        config: preprocessing configuration.
        cache_dir: folder of the on-disk cache (None: no cache).
        workers: worker processes (1: in this process).
        on_error: ``raise`` the first failure, or ``skip`` the sample and record why.
    """

    def __init__(self, specs: Sequence[ViewSpec], config: ViewsConfig, cache_dir: str | Path | None = None,
                 workers: int = 1, on_error: str = "raise"):
        self.specs = tuple(specs)
        self.config = config
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.workers = max(1, int(workers))
        self.on_error = on_error
        self.skipped: list[str] = []

    def build(self, samples: Sequence[Sample], progress: Callable[[int, int], None] | None = None) -> tuple[list[Sample], dict[str, np.ndarray]]:
        """Views of ``samples`` stacked along a new first axis.

        Returns:
            (kept samples, dict view name -> (N, ...) array); with ``on_error="skip"`` failed
            samples are left out and listed in :attr:`skipped`.

        Raises:
            PreprocessError: a sample failed and ``on_error="raise"``.
            OutputError: the cache folder cannot be created or written.
        """
        if self.cache_dir is not None:
            make_output_dir(self.cache_dir, "view cache")
        jobs = [(s, self.specs, self.config, self.cache_dir) for s in samples]
        results: Iterable
        if self.workers > 1 and len(jobs) > 1:
            pool = ProcessPoolExecutor(max_workers=self.workers)
            results = pool.map(_build_cached, jobs, chunksize=max(1, len(jobs) // (4 * self.workers)))
        else:
            pool = None
            results = map(_build_cached, jobs)
        kept, built = [], []
        try:
            for i, (sample, result) in enumerate(zip(samples, results)):
                if isinstance(result, str):
                    if self.on_error == "raise":
                        raise PreprocessError(f"{sample.sample_id}: {result}")
                    self.skipped.append(f"{sample.sample_id}: {result}")
                else:
                    kept.append(sample)
                    built.append(result)
                if progress is not None:
                    progress(i + 1, len(samples))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        if not built:
            raise PreprocessError("no sample produced views" + (f"; first failure: {self.skipped[0]}" if self.skipped else ""))
        stacked = {name: np.stack([b[name] for b in built]) for name in built[0]}
        return kept, stacked
