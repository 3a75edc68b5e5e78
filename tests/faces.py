"""A real face with known motion: ``skimage.data.astronaut()`` animated with SynthME's AU
displacement fields and rigid head motion.

Procedural SynthME faces are not reliably found by MTCNN/dlib, so face tests use this photo.
Frame t shows the neutral face deformed by the AU field at intensity ``intensity[t]`` and then
moved by the head motion ``transforms[t]``; every frame is one resampling of the full photo
(no border effects), and the true transforms and flows are returned with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

# Square window of the 512 x 512 photo around the face (dlib box (175, 76)-(265, 166)).
_WINDOW_X0, _WINDOW_Y0, _WINDOW_SIDE = 124, 29, 192


@dataclass(frozen=True)
class AnimatedFace:
    """Attributes:
    frames: (T, H, W, 3) uint8 RGB, frame 0 is the neutral onset.
    transforms: (T, 2, 3) true head motion: onset pixel p is at transforms[t] @ (p, 1) in frame t.
    flows: (T, H, W, 2) float32 true forward flow from frame 0 to frame t (OpenCV convention:
        frames[0][y, x] ~ frames[t][y + v, x + u]).
    intensity: (T,) temporal AU profile in [0, 1] (AU intensity at frame t = aus[au] * intensity[t]).
    landmarks: (68, 2) dlib landmarks of the neutral frame 0 (from which the AU fields are built).
    """

    frames: np.ndarray
    transforms: np.ndarray
    flows: np.ndarray
    intensity: np.ndarray
    landmarks: np.ndarray


@functools.lru_cache(maxsize=4)
def _photo(scale: float) -> np.ndarray:
    from skimage.data import astronaut

    photo = astronaut()
    if scale != 1.0:
        side = int(round(photo.shape[0] * scale))
        photo = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return photo


def head_motion(dx: float, dy: float, angle_deg: float, centre: tuple[float, float]) -> np.ndarray:
    """(2, 3) rotation by ``angle_deg`` (counter-clockwise on screen) about ``centre``, then a
    translation by (dx, dy) pixels."""
    matrix = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    matrix[:, 2] += (dx, dy)
    return matrix


@functools.lru_cache(maxsize=4)
def astronaut_face(size: int = 192) -> np.ndarray:
    """The neutral face, (size, size, 3) uint8 RGB (read-only)."""
    scale = size / _WINDOW_SIDE
    x0, y0 = _WINDOW_X0 * scale, _WINDOW_Y0 * scale
    face = cv2.warpAffine(_photo(scale), np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]]), (size, size), flags=cv2.INTER_LINEAR)
    face.flags.writeable = False
    return face


@functools.lru_cache(maxsize=4)
def neutral_landmarks(size: int = 192) -> np.ndarray:
    """dlib landmarks of :func:`astronaut_face`, (68, 2) float32 (read-only)."""
    from merkit.preprocess.face import landmarks68

    points = landmarks68(astronaut_face(size), detector="dlib")
    points.flags.writeable = False
    return points


def _sample(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of an (H, W, 2) field at (..., 2) float points."""
    maps = points.astype(np.float32)
    return cv2.remap(field, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float64)


def animated_astronaut(
    aus: dict[str, float] | None,
    rigid: Sequence[tuple[float, float, float]] | None,
    n_frames: int,
    size: int = 192,
    amplitude: float = 0.07,
) -> AnimatedFace:
    """Render the astronaut's face with head motion.

    Args:
        aus: peak AU intensities, SynthME codes (``{"12": 1.0}``, ``{"L12": 1}``); None: no expression.
        rigid: per frame (dx, dy, angle_deg) head motion relative to frame 0, about the face
            centre; None: no head motion.
        n_frames: T.
        size: output side in pixels (the face is about 0.47 * size wide).
        amplitude: peak displacement of an AU at intensity 1, as a fraction of the inter-ocular
            distance (SynthME's default is 0.07).
    """
    scale = size / _WINDOW_SIDE
    photo = _photo(scale)
    offset = np.array([_WINDOW_X0, _WINDOW_Y0], dtype=np.float64) * scale
    centre = (size / 2.0, size / 2.0)
    intensity = np.sin(np.pi * np.arange(n_frames) / max(1, n_frames - 1)) ** 2
    transforms = np.empty((n_frames, 2, 3))
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    flows = np.empty((n_frames, size, size, 2), dtype=np.float32)
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64)), axis=-1)
    landmarks = neutral_landmarks(size)
    field = np.zeros((size, size, 2), dtype=np.float32)
    if aus:
        from merkit.data.synthme.actions import FaceGeometry, au_displacement

        geometry = FaceGeometry.from_landmarks68(landmarks)
        field = au_displacement(aus, geometry, (size, size), amplitude=amplitude * geometry.interocular)
    for t in range(n_frames):
        dx, dy, angle = rigid[t] if rigid is not None else (0.0, 0.0, 0.0)
        motion = head_motion(dx, dy, angle, centre)
        transforms[t] = motion
        inverse = cv2.invertAffineTransform(motion)
        # Backward: output pixel y shows the deformed face at q = motion^-1(y), whose skin came
        # from the neutral point q - D(q) (SynthME's backward-warp convention).
        deformed = grid @ inverse[:, :2].T + inverse[:, 2]
        source = deformed - intensity[t] * _sample(field, deformed)
        maps = (source + offset).astype(np.float32)
        frames[t] = cv2.remap(photo, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        # Forward: the neutral point p ends up at motion(q) with q - D(q) = p (fixed point).
        moved = grid.copy()
        for _ in range(20):
            moved = grid + intensity[t] * _sample(field, moved)
        flows[t] = (moved @ motion[:, :2].T + motion[:, 2] - grid).astype(np.float32)
    return AnimatedFace(frames=frames, transforms=transforms, flows=flows, intensity=intensity, landmarks=np.array(landmarks))
