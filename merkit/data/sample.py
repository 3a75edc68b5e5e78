"""The data model: what a clip *is*, independent of what any model needs.

Loaders produce :class:`Sample` objects and nothing else. Frame numbers (``onset_frame``,
``apex_frame``, ``offset_frame``) are the dataset's own numbers, i.e. the numbers in the frame
file names, never positions in a list; :meth:`FrameSource.position` maps one to the other.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from merkit.errors import MissingFramesError

_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


def frame_number(path: str | Path) -> int:
    """Frame number parsed from the last run of digits in a file's stem.

    ``reg_img46.jpg`` -> 46, ``006_05562.jpg`` -> 5562, ``image0001.bmp`` -> 1.

    Raises:
        MissingFramesError: the stem holds no digits.
    """
    name = os.path.basename(str(path))
    dot = name.rfind(".")
    stem = name[:dot] if 0 < dot < len(name) - 1 else name  # as Path.stem, without building a Path
    match = _LAST_INT.search(stem)
    if match is None:
        raise MissingFramesError(f"{path}: expected a frame file name ending in a number")
    return int(match.group(1))


@dataclass(frozen=True)
class FrameSource:
    """Lazy, ordered list of image files of one clip (or its depth video).

    Attributes:
        paths: image files sorted by frame number.
        numbers: the frame number of each path (strictly increasing).
    """

    paths: tuple[Path, ...]
    numbers: tuple[int, ...]

    @classmethod
    def from_dir(cls, directory: str | Path, pattern: str = "*.jpg") -> "FrameSource":
        """All files matching ``pattern`` in ``directory``, ordered by their frame number.

        Raises:
            MissingFramesError: the folder does not exist or holds no matching file.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise MissingFramesError(f"{directory}: frame folder does not exist")
        matches = re.compile(fnmatch.translate(pattern)).fullmatch
        # os.scandir, not Path.glob: a CAS(ME)^3 recording folder holds thousands of frames
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and matches(e.name) and e.is_file()]
        if not names:
            raise MissingFramesError(f"{directory}: no frame files matching {pattern!r}")
        numbered = sorted((frame_number(name), name) for name in names)
        numbers = tuple(n for n, _ in numbered)
        if len(set(numbers)) != len(numbers):
            raise MissingFramesError(f"{directory}: two frame files share a frame number")
        return cls(paths=tuple(directory / name for _, name in numbered), numbers=numbers)

    def __len__(self) -> int:
        return len(self.paths)

    def position(self, number: int) -> int:
        """Index in :attr:`paths` of frame ``number``.

        Raises:
            MissingFramesError: no file carries that frame number.
        """
        lo, hi = 0, len(self.numbers)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.numbers[mid] < number:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(self.numbers) or self.numbers[lo] != number:
            folder = self.paths[0].parent if self.paths else "?"
            raise MissingFramesError(
                f"{folder}: frame {number} is not on disk "
                f"(frames present: {self.numbers[0] if self.numbers else '-'}..{self.numbers[-1] if self.numbers else '-'})"
            )
        return lo

    def has(self, number: int) -> bool:
        try:
            self.position(number)
        except MissingFramesError:
            return False
        return True

    def read(self, number: int, *, gray: bool = False) -> np.ndarray:
        """Read frame ``number`` as uint8, (H, W, 3) RGB or (H, W) when ``gray``."""
        return read_image(self.paths[self.position(number)], gray=gray)

    def between(self, first: int, last: int) -> "FrameSource":
        """The frames whose numbers lie in [first, last]."""
        keep = [i for i, n in enumerate(self.numbers) if first <= n <= last]
        return FrameSource(tuple(self.paths[i] for i in keep), tuple(self.numbers[i] for i in keep))


def read_image(path: str | Path, *, gray: bool = False) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), or (H, W) when ``gray``.

    Raises:
        MissingFramesError: the file is missing or cannot be decoded.
    """
    import cv2

    flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise MissingFramesError(f"{path}: missing or not a readable image")
    if not gray:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


@dataclass(frozen=True)
class Sample:
    """One micro-expression clip.

    Attributes:
        dataset: loader name (``casme2``, ``samm`` ...).
        subject: subject id as a string, unique within ``dataset`` (``sub01``, ``006``).
        clip_id: the clip's id, unique within the subject (``EP02_01f``).
        frames: lazy frame source of the clip's folder.
        onset_frame, apex_frame, offset_frame: dataset frame numbers; ``apex_frame`` is None
            where the dataset gives no apex (the run's apex policy decides).
        emotion: normalised (lower-case) emotion string as annotated.
        label: class index under the chosen protocol, None before a protocol is applied.
        aus: AU codes as annotated, one string per AU (``R12``, ``4``, ``L14``).
        depth: optional lazy depth frames aligned with ``frames``.
        fps: frame rate of ``frames``.
        meta: anything else the loader knows (``row``: spreadsheet row, ground truth ...).
    """

    dataset: str
    subject: str
    clip_id: str
    frames: FrameSource
    onset_frame: int
    apex_frame: int | None
    offset_frame: int
    emotion: str
    label: int | None = None
    aus: tuple[str, ...] = ()
    depth: FrameSource | None = None
    fps: float = 200.0
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def sample_id(self) -> str:
        """Globally unique id ``dataset/subject/clip_id``."""
        return f"{self.dataset}/{self.subject}/{self.clip_id}"

    @property
    def group(self) -> str:
        """The LOSO grouping key: subject ids are only unique within a dataset."""
        return f"{self.dataset}/{self.subject}"

    def with_label(self, label: int | None) -> "Sample":
        return replace(self, label=label)
