"""Footage to predict on: a video file, a folder of frames, or frames in memory.

A :class:`Footage` is an ordered run of RGB frames with a frame rate. Frames are read in order
(videos are decoded sequentially, never by seeking, so every container PyAV reads gives the
same frame numbers): one pass for spotting, one more for the frames of the intervals found.
Frame numbers are positions 0, 1, ... for videos and arrays, and the numbers in the file names
for a folder (as in the datasets' folders). Times are ``position / fps`` seconds.

:class:`ArrayFrameSource` puts frames held in memory behind the dataset frame-source interface,
so that the preprocess pipeline builds views of new footage exactly as it does for a dataset
clip (:func:`clip_sample`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from merkit.data.sample import FrameSource, Sample, read_image
from merkit.errors import ConfigError, FootageError, MissingFramesError

#: image suffixes a folder of frames may use
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ArrayFrameSource(FrameSource):
    """Frames held in memory, numbered like a dataset clip's files.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB; ``frames[i]`` carries number ``numbers[i]``.
    """

    frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1, 3), np.uint8), repr=False, compare=False)

    @classmethod
    def of(cls, frames: np.ndarray, numbers: Sequence[int]) -> "ArrayFrameSource":
        frames = np.asarray(frames)
        if len(frames) != len(numbers):
            raise ConfigError(f"{len(frames)} frames but {len(numbers)} frame numbers")
        return cls(paths=(), numbers=tuple(int(n) for n in numbers), frames=frames)

    def read(self, number: int, *, gray: bool = False) -> np.ndarray:
        """Frame ``number`` as uint8, (H, W, 3) RGB or (H, W) when ``gray``."""
        frame = self.frames[self.position(number)]
        if gray:
            import cv2

            return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        return frame

    def between(self, first: int, last: int) -> "ArrayFrameSource":
        keep = [i for i, n in enumerate(self.numbers) if first <= n <= last]
        return ArrayFrameSource.of(self.frames[keep], [self.numbers[i] for i in keep])


class Footage:
    """An ordered run of frames with a frame rate.

    Args:
        name: what the frames came from (file, folder or ``<array>``), named in errors.
        fps: frames per second.
        iterate: returns an iterator over every frame in order, (H, W, 3) uint8 RGB.
        numbers: the frame numbers, increasing (None: positions 0..T-1, counted on the first
            full pass over the frames).
    """

    def __init__(self, name: str, fps: float, iterate: Callable[[], Iterator[np.ndarray]],
                 numbers: Sequence[int] | None = None):
        self.name = name
        self.fps = float(fps)
        self._iterate = iterate
        self._numbers = None if numbers is None else np.asarray(numbers, dtype=np.int64)

    @property
    def numbers(self) -> np.ndarray:
        """(T,) frame numbers (a video is decoded once to count its frames)."""
        if self._numbers is None:
            self._numbers = np.arange(sum(1 for _ in self._iterate()))
        return self._numbers

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def counted(self) -> bool:
        """Whether the number of frames is known without another pass over a video."""
        return self._numbers is not None

    def numbers_at(self, first: int, last: int) -> np.ndarray:
        """Frame numbers of positions ``first..last`` (a video's without counting its frames)."""
        if self._numbers is None:
            return np.arange(first, last + 1)
        return self._numbers[first:last + 1]

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame in order, (H, W, 3) uint8 RGB (a full pass also counts them)."""
        count = 0
        for frame in self._iterate():
            count += 1
            yield frame
        if self._numbers is None:
            self._numbers = np.arange(count)

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """The frames of each inclusive position range ``(first, last)``, in one pass that stops
        after the last frame needed.

        Returns:
            one (last - first + 1, H, W, 3) uint8 array per range.

        Raises:
            FootageError: a range lies outside the footage.
        """
        if not ranges:
            return []
        wanted: dict[int, list[int]] = {}
        for index, (first, last) in enumerate(ranges):
            if not 0 <= first <= last:
                raise FootageError(f"{self.name}: frame positions {first}..{last} are not an interval of positions >= 0")
            for position in range(first, last + 1):
                wanted.setdefault(position, []).append(index)
        collected: list[list[np.ndarray]] = [[] for _ in ranges]
        stop = max(last for _, last in ranges)
        seen = 0
        for position, frame in enumerate(self._iterate()):
            seen = position + 1
            for index in wanted.get(position, ()):
                collected[index].append(frame)
            if position >= stop:
                break
        if seen <= stop:
            raise FootageError(f"{self.name}: frames up to position {stop} were asked for but it holds only {seen} "
                               f"frames (positions 0..{seen - 1})")
        return [np.stack(frames) for frames in collected]

    def position(self, number: int) -> int:
        """Position of frame ``number``.

        Raises:
            FootageError: no frame carries that number (frames of a video not counted yet are
                checked when they are read).
        """
        if self._numbers is None and number >= 0:  # numbered by position; no pass to count them
            return int(number)
        found = np.flatnonzero(self.numbers == number)
        if found.size == 0:
            raise FootageError(f"{self.name}: no frame {number} (frames {self.numbers[0]}..{self.numbers[-1]})")
        return int(found[0])


def from_array(frames: np.ndarray, fps: float | None, name: str = "<array>") -> Footage:
    """Footage of frames in memory: (T, H, W, 3) RGB or (T, H, W) grey, uint8 or float in [0, 1].

    Raises:
        ConfigError: no frame rate given, or frames of another shape.
    """
    frames = np.asarray(frames)
    if fps is None or fps <= 0:
        raise ConfigError(f"{name}: frames given as an array need their frame rate (fps > 0)")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    if frames.ndim != 4 or frames.shape[3] != 3 or len(frames) == 0:
        raise ConfigError(f"{name}: expected (T, H, W, 3) RGB or (T, H, W) grey frames, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        if frames.max(initial=0) > 8:
            raise ConfigError(f"{name}: float frames must hold values in [0, 1]")
        frames = np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
    return Footage(name, float(fps), lambda: iter(frames), np.arange(len(frames)))


def from_folder(folder: str | Path, fps: float | None) -> Footage:
    """Footage of the image files in ``folder``, ordered by the number in their names.

    Raises:
        ConfigError: no frame rate given (a folder does not record one).
        FootageError: no image files, or two files with one frame number.
    """
    folder = Path(folder)
    suffixes = Counter(p.suffix.lower() for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not suffixes:
        raise FootageError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) to read frames from")
    if fps is None or fps <= 0:
        raise ConfigError(f"{folder}: a folder of frames records no frame rate; give it (--fps)")
    suffix = suffixes.most_common(1)[0][0]
    try:
        source = FrameSource.from_dir(folder, f"*{suffix}")
    except MissingFramesError as err:
        raise FootageError(str(err)) from None

    def iterate() -> Iterator[np.ndarray]:
        for path in source.paths:
            try:
                yield read_image(path)
            except MissingFramesError as err:
                raise FootageError(str(err)) from None

    return Footage(str(folder), float(fps), iterate, source.numbers)


def _open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise FootageError(f"{path}: not a readable video ({type(err).__name__}: {err})") from None
    if not container.streams.video:
        container.close()
        raise FootageError(f"{path}: holds no video stream")
    return container


def _decode(path: Path) -> Iterator[np.ndarray]:
    import av

    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as err:
        raise FootageError(f"{path}: video decoding failed ({type(err).__name__}: {err})") from None
    finally:
        container.close()


def from_video(path: str | Path, fps: float | None = None) -> Footage:
    """Footage of a video file (any container and codec PyAV reads).

    The frame rate is the stream's average rate unless ``fps`` is given. Frames are decoded on
    demand; they are counted on the first full pass (container frame counts are not always
    right).

    Raises:
        FootageError: the file is missing, is not a video, or holds no decodable frame.
    """
    path = Path(path)
    if not path.is_file():
        raise FootageError(f"{path}: no such video file")
    container = _open_video(path)
    try:
        rate = container.streams.video[0].average_rate or container.streams.video[0].guessed_rate
    finally:
        container.close()
    if fps is None:
        if not rate:
            raise FootageError(f"{path}: the video records no frame rate; give it (--fps)")
        fps = float(rate)
    return Footage(str(path), float(fps), lambda: _decode(path))


def write_video(path: str | Path, frames: np.ndarray, fps: float, *, crf: int = 12, lossless: bool = False) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as an H.264 video.

    Args:
        crf: H.264 quality (0 best; 12 is visually lossless, 23 is x264's default).
        lossless: encode the RGB frames exactly (``libx264rgb`` at crf 0) instead of converting
            them to 4:2:0 YUV (which rounds the colours and halves the chroma resolution).

    Odd sizes are padded by one replicated row/column (4:2:0 needs even sizes).

    Raises:
        ConfigError: frames of another shape, or a non-positive rate.
    """
    from fractions import Fraction

    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ConfigError(f"write_video expects (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if fps <= 0:
        raise ConfigError(f"write_video: fps must be > 0, got {fps}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if (pad_h or pad_w) and not lossless:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.options = {"crf": "0" if lossless else str(int(crf))}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def open_footage(source: str | Path | np.ndarray, fps: float | None = None) -> Footage:
    """A video file, a folder of frames, or an array of frames as :class:`Footage`.

    Raises:
        FootageError: the path does not exist or cannot be read.
        ConfigError: a folder or an array without ``fps``.
    """
    if isinstance(source, np.ndarray):
        return from_array(source, fps)
    path = Path(source)
    if path.is_dir():
        return from_folder(path, fps)
    if path.is_file():
        return from_video(path, fps)
    raise FootageError(f"{path}: no such video file or frame folder")


def clip_sample(frames: np.ndarray, numbers: Sequence[int], *, onset: int, apex: int | None, offset: int,
                fps: float, name: str) -> Sample:
    """A :class:`~merkit.data.Sample` of an interval of new footage, for the preprocess pipeline.

    Args:
        frames: (T, H, W, 3) uint8 frames ``onset..offset`` (numbers ``numbers``).
        onset, apex, offset: frame numbers (apex None: the model's apex policy decides).
        name: the clip id, named in errors.
    """
    source = ArrayFrameSource.of(frames, numbers)
    return Sample(dataset="footage", subject="-", clip_id=name, frames=source, onset_frame=int(onset),
                  apex_frame=None if apex is None else int(apex), offset_frame=int(offset), emotion="", fps=float(fps))
