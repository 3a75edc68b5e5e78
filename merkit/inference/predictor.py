"""Apply a trained model to new footage: ``Predictor.from_dir(model_dir).predict(video)``.

The chain is the training pipeline's, run forward: footage -> (spotting, when no interval is
given) -> for each interval a :class:`~merkit.data.Sample` over the footage's frames -> the
preprocess pipeline's :func:`~merkit.preprocess.pipeline.build_views` (face step, apex,
sampling, flow ... exactly as in training) -> the model(s) -> one row per interval.

Output columns (one row per interval):

=================== ==========================================================================
``source``          the video, folder, array or dataset clip predicted on
``start_frame``     onset frame number (video: position; folder: the number in the file name)
``apex_frame``      apex frame number
``end_frame``       offset frame number
``start_s`` ...     ``start_s``, ``apex_s``, ``end_s``: seconds after the footage's first frame
``n_frames``        frames from onset to offset (the frames the views are built from)
``apex_source``     how the apex was found (``given``, ``annotated``, ``spotted:<method>``, ...)
``class``           the predicted class (empty when the interval failed)
``p_<class>``       class probabilities (averaged over the fold models of an ensemble)
``spotting_score``  the spotting contrast's robust z-score at the interval (NaN when given)
``status``          ``ok``, or the typed error that kept the interval from being classified
=================== ==========================================================================

``DataFrame.attrs`` carries ``source``, ``fps``, ``n_frames`` (of the footage; None when a video
was only read up to a given interval), ``classes``, ``motion_score`` ((T,) spotting score per
frame, None with a given interval), ``threshold`` (the spotting threshold) and, with
``explain=True``, ``explanations`` (one :class:`~merkit.eval.explain.Explanation` or None per row).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from merkit.config import RunConfig, ViewsConfig
from merkit.data.sample import Sample
from merkit.errors import (ClipTooShortError, ConfigError, DatasetError, FaceNotFoundError, FootageError, MerkitError,
                           check_choice)
from merkit.inference.footage import Footage, clip_sample, open_footage
from merkit.inference.model_dir import ModelDirectory, load_models, read_model_dir
from merkit.views import ViewSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpottingSettings:
    """How candidate intervals are spotted in footage without a given interval.

    Attributes:
        method: ``diff`` or ``flow`` distance (:func:`merkit.preprocess.spotting.spot_intervals`).
        min_duration, max_duration: micro-expression duration range, seconds.
        half_window: half window of the contrast, seconds.
        threshold: robust z-score a candidate's peak must reach.
        onset_level: fraction of the peak that delimits onset and offset.
        size: side (pixels) of the grey face crops spotting runs on.
        redetect: seconds between face detections while tracking the face (face step on).
        move: a new detection replaces the tracked box when its centre moved by more than this
            fraction of the box width (smaller moves are detector jitter).
    """

    method: str = "diff"
    min_duration: float = 0.04
    max_duration: float = 0.5
    half_window: float = 0.1
    threshold: float = 5.0
    onset_level: float = 0.1
    size: int = 64
    redetect: float = 1.0
    move: float = 0.1


@dataclass(frozen=True)
class _Interval:
    onset: int  # frame numbers
    apex: int | None
    offset: int
    score: float = float("nan")
    apex_source: str = "given"


class Predictor:
    """A trained model (or a LOSO run's fold models) ready to classify new clips.

    Args:
        directory: the model directory (:func:`~merkit.inference.model_dir.read_model_dir`).
        models: its models, in eval mode on ``device``.
        device: where the models run (``cpu``, ``cuda``, ``mps``).
    """

    def __init__(self, directory: ModelDirectory, models: Sequence[nn.Module], device: str | torch.device = "cpu"):
        if not models:
            raise ConfigError(f"{directory.path}: no model to predict with")
        self.directory = directory
        self.models = list(models)
        self.device = torch.device(device)

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu") -> "Predictor":
        """Load a model directory (final model, LOSO run = ensemble, or one fold) onto ``device``.

        Raises:
            ConfigError: not a model directory, or its weights do not fit its config.
        """
        directory = read_model_dir(path)
        return cls(directory, load_models(directory, device), device)

    # ------------------------------------------------------------------ what the model needs

    @property
    def config(self) -> RunConfig:
        return self.directory.config

    @property
    def classes(self) -> tuple[str, ...]:
        return self.directory.classes

    @property
    def input_spec(self) -> tuple[ViewSpec, ...]:
        return tuple(self.models[0].input_spec)

    @property
    def min_frames(self) -> int:
        """Fewest onset..offset frames a clip must have: the longest sequence view, at least 2
        (an onset and a distinct apex)."""
        return max([2] + [spec.length for spec in self.input_spec if spec.length is not None])

    # ------------------------------------------------------------------ the model

    @torch.no_grad()
    def predict_views(self, views: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities of built views, averaged over the directory's models (each also
        over the mirror image with ``train.augment.test_hflip``, as in training's evaluation).

        Args:
            views: view name -> (N, ...) float32 arrays (the pipeline's output, stacked).

        Returns:
            (N, K) float64 probabilities, columns in :attr:`classes` order.
        """
        from merkit.train.trainer import predict_members

        tensors = {name: torch.from_numpy(np.ascontiguousarray(array)).to(self.device) for name, array in views.items()}
        return predict_members(self.models, tensors, self.config.train.augment.test_hflip)

    def views_of(self, sample: Sample, views_config: ViewsConfig | None = None) -> dict[str, np.ndarray]:
        """The model's views of one sample, built by the training pipeline (batch axis added)."""
        from merkit.preprocess.pipeline import build_views

        views = build_views(sample, self.input_spec, views_config or self.config.views)
        return {name: np.asarray(array)[None] for name, array in views.items()}

    # ------------------------------------------------------------------ footage -> rows

    def predict(
        self,
        source: str | Path | np.ndarray,
        *,
        onset: int | None = None,
        apex: int | None = None,
        offset: int | None = None,
        fps: float | None = None,
        face: str | None = None,
        root: str | Path | None = None,
        spotting: SpottingSettings | None = None,
        explain: bool = False,
    ) -> pd.DataFrame:
        """Classify the micro-expressions of a video, a folder of frames, frames in memory, or a
        dataset clip.

        Args:
            source: a video file (any format PyAV reads), a folder of frame images, a (T, H, W, 3)
                uint8 array, or a dataset clip id ``dataset/subject/clip`` (with ``root``).
            onset, apex, offset: the interval in frame numbers (onset and offset together; apex
                optional: without it the apex is spotted, or the middle frame under the config's
                ``middle`` policy). None: spot candidate intervals (a dataset clip uses its
                annotation).
            fps: frame rate (needed for folders and arrays; overrides a video's).
            face: face step before the views: ``none`` (the footage is face crops), ``mtcnn`` or
                ``dlib``; None: the model's config (``views.face``). Also decides whether
                spotting tracks the face.
            root: dataset root for a dataset clip id (default ``$MERKIT_<DATASET>_ROOT``).
            spotting: spotting settings (None: :class:`SpottingSettings` defaults).
            explain: add the model's explanation map of each interval (``attrs["explanations"]``).

        Returns:
            One row per interval (columns in the module docstring).

        Raises:
            FootageError: the video or folder cannot be read.
            FaceNotFoundError: the face step found no face.
            ClipTooShortError: the given interval (or the footage, for spotting) holds fewer
                frames than the model (or spotting) needs.
            ConfigError: an incomplete interval, an unknown face step, an array without fps.
        """
        if (onset is None) != (offset is None) or (apex is not None and onset is None):
            raise ConfigError("give the interval as onset and offset together (apex optional), or none of them to spot")
        if face is not None:
            check_choice("face step", face, ("none", "mtcnn", "dlib"))
        sample = self._dataset_sample(source, root) if _looks_like_clip_id(source) else None
        if sample is not None:
            return self._predict_dataset_clip(sample, onset, apex, offset, face, explain)
        self._check_footage_sources()
        footage = open_footage(source, fps)
        face = face or self.config.views.face
        scores, settings = None, spotting or SpottingSettings()
        if onset is not None:
            if offset < onset:
                raise ConfigError(f"{footage.name}: offset {offset} precedes onset {onset}")
            intervals = [_Interval(int(onset), None if apex is None else int(apex), int(offset))]
        else:
            scores, intervals = self._spot(footage, face, settings)
        rows, explanations = self._classify(footage, intervals, face, strict=onset is not None, explain=explain)
        table = pd.DataFrame(rows, columns=self._columns())
        table.attrs.update(source=footage.name, fps=footage.fps, n_frames=len(footage) if footage.counted else None,
                           classes=list(self.classes), motion_score=scores,
                           threshold=settings.threshold if scores is not None else None)
        if explain:
            table.attrs["explanations"] = explanations
        return table

    def _check_footage_sources(self) -> None:
        """Refuse footage when the model's views need data only a dataset clip has."""
        names = {spec.name for spec in self.input_spec}
        views = self.config.views
        needs = []
        if "depth_seq" in names and views.depth in ("dataset", "synthme"):
            needs.append(f"depth from {views.depth!r} (views.depth)")
        if "au" in names and views.au == "synthme":
            needs.append("AU landmarks from 'synthme' (views.au)")
        if needs:
            raise ConfigError(
                f"model {self.config.model_name} reads {' and '.join(needs)}, which only dataset clips have; predict a "
                "dataset clip id, or use a model trained with views.depth: depth-anything:<weights dir> and views.au: dlib")

    def _columns(self) -> list[str]:
        return (["source", "start_frame", "apex_frame", "end_frame", "start_s", "apex_s", "end_s", "n_frames",
                 "apex_source", "class"] + [f"p_{name}" for name in self.classes] + ["spotting_score", "status"])

    def _views_config(self, face: str, apex_given: bool) -> ViewsConfig:
        views = self.config.views
        policy = "annotated" if apex_given else ("middle" if views.apex_policy == "middle" else "spotted")
        return views.model_copy(update={"face": face, "apex_policy": policy})

    def _classify(self, footage: Footage, intervals: list[_Interval], face: str, *, strict: bool,
                  explain: bool) -> tuple[list[dict[str, Any]], list]:
        positions = [(footage.position(i.onset), footage.position(i.offset)) for i in intervals]
        for interval, (first, last) in zip(intervals, positions):
            if interval.apex is not None and not interval.onset <= interval.apex <= interval.offset:
                raise ConfigError(f"{footage.name}: apex {interval.apex} lies outside onset..offset "
                                  f"{interval.onset}..{interval.offset}")
        frames = footage.read_ranges(positions)
        rows, explanations = [], []
        for interval, (first, last), clip in zip(intervals, positions, frames):
            numbers = footage.numbers_at(first, last)
            name = f"{Path(footage.name).name}@{interval.onset}-{interval.offset}"
            sample = clip_sample(clip, numbers, onset=interval.onset, apex=interval.apex, offset=interval.offset,
                                 fps=footage.fps, name=name)
            base = {"source": footage.name, "start_frame": interval.onset, "end_frame": interval.offset,
                    "start_s": first / footage.fps, "end_s": last / footage.fps, "n_frames": len(clip),
                    "spotting_score": interval.score}
            try:
                row, explanation = self._classify_sample(sample, self._views_config(face, interval.apex is not None),
                                                         explain, apex_source=interval.apex_source)
            except MerkitError as err:
                if strict:
                    raise
                row, explanation = {"apex_frame": interval.apex, "status": f"{type(err).__name__}: {err}"}, None
            if row.get("apex_frame") is not None:
                row["apex_s"] = footage.position(row["apex_frame"]) / footage.fps
            rows.append({**base, **row})
            explanations.append(explanation)
        return rows, explanations

    def _classify_sample(self, sample: Sample, views_config: ViewsConfig, explain: bool,
                         apex_source: str) -> tuple[dict[str, Any], Any]:
        """One row's model part for one sample: apex, class, probabilities, status."""
        from merkit.preprocess.pipeline import load_course

        count = sample.frames.position(sample.offset_frame) - sample.frames.position(sample.onset_frame) + 1
        if count < self.min_frames:
            raise ClipTooShortError(
                f"{sample.sample_id}: onset..offset {sample.onset_frame}..{sample.offset_frame} holds {count} frames; "
                f"model {self.config.model_name} needs at least {self.min_frames}")
        if sample.apex_frame is None:  # the pipeline's apex policy picks it (before the face step)
            course = load_course(sample, views_config.model_copy(update={"face": "none"}), full=False)
            sample = replace(sample, apex_frame=int(course.numbers[course.apex]))
            apex_source = course.apex_source
            views_config = views_config.model_copy(update={"apex_policy": "annotated"})
        views = self.views_of(sample, views_config)
        apex_frame = sample.apex_frame
        probabilities = self.predict_views(views)[0]
        row = {"apex_frame": apex_frame, "apex_source": apex_source,
               "class": self.classes[int(np.argmax(probabilities))], "status": "ok"}
        row.update({f"p_{name}": float(p) for name, p in zip(self.classes, probabilities)})
        explanation = None
        if explain:
            from merkit.eval.explain import explain_views

            explanation = explain_views(self.models, views, int(np.argmax(probabilities)), self.config.model_name)
        return row, explanation

    # ------------------------------------------------------------------ dataset clips

    def _dataset_sample(self, clip_id: str, root: str | Path | None) -> Sample | None:
        from merkit.data.registry import all_datasets, load_dataset

        dataset = str(clip_id).split("/", 1)[0]
        if dataset not in all_datasets():
            return None
        samples = load_dataset(dataset, root).samples
        for sample in samples:
            if sample.sample_id == clip_id:
                return sample
        raise DatasetError(f"{clip_id}: no such clip in dataset {dataset} (clip ids look like {samples[0].sample_id})")

    def _predict_dataset_clip(self, sample: Sample, onset: int | None, apex: int | None, offset: int | None,
                              face: str | None, explain: bool) -> pd.DataFrame:
        views_config = self.config.views
        if face is not None:
            views_config = views_config.model_copy(update={"face": face})
        apex_source = "annotated"
        if onset is not None:
            sample = replace(sample, onset_frame=int(onset), apex_frame=None if apex is None else int(apex),
                             offset_frame=int(offset))
            views_config = self._views_config(views_config.face, apex is not None)
            apex_source = "given"
        row, explanation = self._classify_sample(sample, views_config, explain, apex_source)
        seconds = {f"{key}_s": sample.frames.position(frame) / sample.fps for key, frame in
                   (("start", sample.onset_frame), ("apex", row["apex_frame"]), ("end", sample.offset_frame))}
        count = sample.frames.position(sample.offset_frame) - sample.frames.position(sample.onset_frame) + 1
        table = pd.DataFrame([{"source": sample.sample_id, "start_frame": sample.onset_frame,
                               "end_frame": sample.offset_frame, "n_frames": count, "spotting_score": float("nan"),
                               **seconds, **row}], columns=self._columns())
        table.attrs.update(source=sample.sample_id, fps=sample.fps, n_frames=len(sample.frames),
                           classes=list(self.classes), motion_score=None)
        if explain:
            table.attrs["explanations"] = [explanation]
        return table

    # ------------------------------------------------------------------ spotting

    def _spot(self, footage: Footage, face: str, settings: SpottingSettings) -> tuple[np.ndarray, list[_Interval]]:
        """Spotting score per frame and the candidate intervals (frame numbers)."""
        from merkit.preprocess.spotting import spot_intervals

        crops, segments = spotting_crops(footage, face, settings)
        k = max(1, int(round(settings.half_window * footage.fps)))
        if len(crops) < 2 * k + 1:
            raise ClipTooShortError(f"{footage.name}: {len(crops)} frames; spotting needs at least {2 * k + 1} "
                                    f"({2 * settings.half_window:g} s at {footage.fps:g} fps), or give the interval")
        scores = np.full(len(crops), np.nan)
        intervals: list[_Interval] = []
        for start, stop in segments:
            if stop - start < 2 * k + 1:
                log.info("%s: frames %d..%d between two face boxes are too few to spot in", footage.name, start, stop - 1)
                continue
            result = spot_intervals(crops[start:stop], footage.fps, method=settings.method,
                                    min_duration=settings.min_duration, max_duration=settings.max_duration,
                                    half_window=settings.half_window, threshold=settings.threshold,
                                    onset_level=settings.onset_level)
            scores[start:stop] = result.scores
            numbers = footage.numbers
            intervals += [_Interval(int(numbers[start + i.onset]), int(numbers[start + i.apex]),
                                    int(numbers[start + i.offset]), i.score, f"spotted:{settings.method}")
                          for i in result.intervals]
        return scores, intervals


def spotting_crops(footage: Footage, face: str, settings: SpottingSettings) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Grey face crops of every frame for spotting, and the runs of frames cut with one face box.

    With a face step the face is detected on the first frame and again every
    ``settings.redetect`` seconds; the box changes only when the face moved by more than
    ``settings.move`` of its width (detector jitter would look like motion), which starts a new
    run. Without one (``face="none"``) the whole frame is used.

    Returns:
        ((T, size, size) uint8 crops, [(start, stop), ...] runs of positions).

    Raises:
        FaceNotFoundError: no face on the first frame.
    """
    from merkit.preprocess.face import box_transform, detect_face, warp_image

    size = (settings.size, settings.size)
    every = max(1, int(round(settings.redetect * footage.fps)))
    crops, starts, box, transform = [], [0], None, None
    for position, frame in enumerate(footage.frames()):
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if face == "none":
            crops.append(cv2.resize(grey, size[::-1], interpolation=cv2.INTER_AREA))
            continue
        if box is None or position % every == 0:
            try:
                found = detect_face(frame, face, sample_id=footage.name, frame=position)
            except FaceNotFoundError:
                if box is None:
                    raise FaceNotFoundError(f"{footage.name}: no face found in the first frame by {face} (nor the "
                                            "other detector); expected one frontal face of at least 20 px") from None
                found = None
            if found is not None and (box is None or _moved(box, found, settings.move)):
                if box is not None:
                    starts.append(position)
                box, transform = found, box_transform(found.xyxy, size, margin=0.1)
        crops.append(warp_image(grey, transform, size))
    if not crops:
        raise FootageError(f"{footage.name}: no frame to read")
    bounds = starts + [len(crops)]
    return np.stack(crops), [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def _moved(box, found, fraction: float) -> bool:
    (cx, cy), (nx, ny) = box.center, found.center
    return bool(np.hypot(nx - cx, ny - cy) > fraction * box.width or abs(found.width / box.width - 1) > 2 * fraction)


def _looks_like_clip_id(source: Any) -> bool:
    if not isinstance(source, (str, os.PathLike)) or Path(source).exists():
        return False
    return str(source).count("/") >= 2


def write_predictions(table: pd.DataFrame, path: str | Path) -> list[Path]:
    """Write a :meth:`Predictor.predict` table as CSV, with its timeline PNG beside it
    (``<stem>-timeline.png``) and, when it carries explanations, one PNG per interval in
    ``<stem>-explain/`` (their paths in an ``explanation`` column).

    Returns:
        the files written.
    """
    from merkit.eval.plots import explanation_panel, plot_maps, plot_timeline

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the CSV file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    table = table.copy()
    explanations = table.attrs.get("explanations")
    if explanations is not None:
        folder = path.parent / f"{path.stem}-explain"
        files = []
        for index, explanation in enumerate(explanations):
            if explanation is None:
                files.append("")
                continue
            row = table.iloc[index]
            label = f"{row['start_frame']}-{row['end_frame']}: {row['class']}"
            file = plot_maps([explanation_panel(explanation, label)], folder / f"interval{index:03d}.png",
                             title=f"{Path(str(row['source'])).name} frames {row['start_frame']}..{row['end_frame']}")
            files.append(str(file))
            written.append(file)
        table["explanation"] = files
    table.to_csv(path, index=False)
    written.insert(0, path)
    written.append(plot_timeline(table, path.parent / f"{path.stem}-timeline.png"))
    return written
