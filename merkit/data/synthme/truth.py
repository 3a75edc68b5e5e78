"""SynthME's per-frame ground truth on disk: one ``synthme_truth.npz`` in each clip's folder.

:func:`~merkit.data.synthetic.write_synthme` writes it next to the clip's frames
(``Cropped/subNN/<Filename>/synthme_truth.npz``); the ``synthme`` loader puts its path in
``sample.meta["synthme_truth"]``, and preprocessing (the ``synthme`` depth and AU landmark
sources) reads it with :func:`read_truth`, so that nothing outside the generator re-renders a clip.

Format: a zlib-compressed NumPy ``.npz`` (read with ``np.load``), for a clip of ``T`` frames of ``H x W`` pixels:

``version``
    () int64, :data:`TRUTH_VERSION`.
``frame_numbers``
    (T,) int64: the file numbers of the frames (``reg_img<N>.jpg``), in order.
``landmarks``
    (T, 68, 2) float32: the exact 68-point dlib-convention landmarks (x, y) in pixels of each
    frame (:meth:`SynthClip.landmarks_at <merkit.data.synthetic.SynthClip.landmarks_at>`).
``depth_steps``
    (T, H, W) uint16: the depth ``d_t`` of each frame (:meth:`SynthClip.depth_at
    <merkit.data.synthetic.SynthClip.depth_at>`: [0, 1], near = large, background exactly 0)
    quantised to 14 bits as ``q_t = 0`` where ``d_t = 0`` and ``clip(round(d_t * 16383), 1, 16383)``
    elsewhere (the background stays exactly the background), stored as ``q_0`` followed by the
    frame-to-frame differences ``q_t - q_{t-1}`` modulo 2^16: consecutive frames differ little,
    so the differences compress 4-5x better than the frames. Decode:
    ``d = np.cumsum(depth_steps, axis=0, dtype=np.uint16) / 16383``; the error is at most
    ``0.5 / 16383`` (3.1e-5) where ``d >= 1 / 16383`` and below ``1 / 16383`` elsewhere.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from merkit.errors import DatasetError

__all__ = ["TRUTH_FILE", "TRUTH_VERSION", "DEPTH_SCALE", "SynthTruth", "write_truth", "read_truth"]

TRUTH_FILE = "synthme_truth.npz"
TRUTH_VERSION = 1
DEPTH_SCALE = 16383  # 14 bits: finer than float16 (11 bits) and ~25 % smaller on disk than 16 bits


@dataclass(frozen=True)
class SynthTruth:
    """One clip's ground truth as read from its ``synthme_truth.npz`` (arrays read-only).

    Attributes:
        path: the file.
        frame_numbers: (T,) int64 file numbers of the frames.
        landmarks: (T, 68, 2) float32 (x, y) pixels.
        depth: (T, H, W) float32 in [0, 1], near = large, background 0.
    """

    path: Path
    frame_numbers: np.ndarray
    landmarks: np.ndarray
    depth: np.ndarray

    def positions(self, numbers: Sequence[int]) -> np.ndarray:
        """(N,) positions in the arrays of the frames with file numbers ``numbers``.

        Raises:
            DatasetError: a number that is not one of the clip's frames.
        """
        numbers = np.asarray(numbers, dtype=np.int64)
        positions = np.searchsorted(self.frame_numbers, numbers)
        inside = positions < len(self.frame_numbers)
        if not (inside.all() and np.array_equal(self.frame_numbers[positions], numbers)):
            known = set(self.frame_numbers.tolist())
            missing = [int(n) for n in numbers if n not in known]
            raise DatasetError(f"{self.path}: holds frames {int(self.frame_numbers[0])}..{int(self.frame_numbers[-1])}, "
                               f"not {missing}")
        return positions


def write_truth(folder: str | Path, frame_numbers: np.ndarray, landmarks: np.ndarray, depth: np.ndarray) -> Path:
    """Write ``folder/synthme_truth.npz`` (format in the module docstring).

    Args:
        folder: the clip's folder.
        frame_numbers: (T,) increasing file numbers.
        landmarks: (T, 68, 2) (x, y) pixels.
        depth: (T, H, W) in [0, 1], background exactly 0.

    Returns:
        the file's path.
    """
    depth = np.clip(np.asarray(depth, dtype=np.float32), 0.0, 1.0)
    quantised = np.rint(depth * np.float32(DEPTH_SCALE)).astype(np.uint16)
    quantised[(quantised == 0) & (depth > 0)] = 1  # only the background is 0
    steps = quantised.copy()
    steps[1:] -= quantised[:-1]  # modulo 2^16
    arrays = {"version": np.int64(TRUTH_VERSION), "frame_numbers": np.asarray(frame_numbers, dtype=np.int64),
              "landmarks": np.asarray(landmarks, dtype=np.float32), "depth_steps": steps}
    path = Path(folder) / TRUTH_FILE
    # np.savez_compressed's layout, at zlib level 1: 4x faster than its level 6 for 25 % more bytes
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(2000, 1, 1, 0, 0, 0))  # same seed, same bytes
            archive.writestr(entry, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    return path


def read_truth(path: str | Path) -> SynthTruth:
    """Read a clip's ``synthme_truth.npz`` (the last 4 files read are cached while unchanged).

    Raises:
        DatasetError: the file is missing (a SynthME folder written before merkit wrote these
            files: regenerate it with ``merkit synth``), unreadable or not in this format.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        root = path.parents[3] if len(path.parents) > 3 else path.parent
        raise DatasetError(
            f"{path.parent}: no SynthME ground-truth file {TRUTH_FILE}; this SynthME folder was written by an older "
            f"merkit that did not write per-clip depth and landmarks. Regenerate it with `merkit synth --out {root}` "
            "(the same --subjects, --clips-per-subject, --preset and --seed as recorded in its synthme.json)"
        ) from None
    return _read_truth(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _read_truth(path: str, mtime_ns: int, size: int) -> SynthTruth:
    try:
        with np.load(path) as data:
            version = int(data["version"])
            if version != TRUTH_VERSION:
                raise DatasetError(f"{path}: SynthME ground-truth version {version}, expected {TRUTH_VERSION}; "
                                   "regenerate the folder with `merkit synth`")
            numbers, landmarks, steps = data["frame_numbers"], data["landmarks"], data["depth_steps"]
    except DatasetError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{path}: unreadable SynthME ground truth ({type(err).__name__}: {err}); "
                           "regenerate the folder with `merkit synth`") from None
    count = len(numbers)
    if landmarks.shape != (count, 68, 2) or steps.ndim != 3 or len(steps) != count or steps.dtype != np.uint16:
        raise DatasetError(f"{path}: expected {count} frames of landmarks (T, 68, 2) and uint16 depth_steps (T, H, W), "
                           f"got {landmarks.shape} and {steps.dtype} {steps.shape}")
    depth = np.cumsum(steps, axis=0, dtype=np.uint16).astype(np.float32) / np.float32(DEPTH_SCALE)
    arrays = [numbers.astype(np.int64), landmarks.astype(np.float32), depth]
    for array in arrays:
        array.flags.writeable = False
    return SynthTruth(Path(path), *arrays)
