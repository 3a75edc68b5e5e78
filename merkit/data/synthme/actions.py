"""FACS action units as smooth, localised displacement fields, and emotions as AU combinations.

Every AU is a small set of *components*: a window centred on a facial part (an anisotropic
Gaussian, or for the jaw a logistic step below the mouth line times a horizontal Gaussian)
times a displacement vector. The field of a set of AU intensities is the intensity-weighted sum
of its components, so it is linear in the intensities and analytic everywhere: it can be
evaluated exactly at any point, which the SynthME ground truth relies on.

Conventions:

* Image coordinates, pixel centres at integers, x to the right, y down; a field is (dx, dy).
* A field ``D`` is a *backward-warp* displacement: the frame is ``neutral(p - D(p))``, i.e. the
  content found at ``p`` came from ``p - D(p)``. ``D`` therefore points in the direction the
  skin moves (AU12: ``dy < 0`` at the lip corners).
* ``L``/``R`` prefixes are the **subject's** left/right, as in FACS and the CASME II / SAMM
  codings: on a frontal, non-mirrored face the subject's left is the *image right*. dlib's
  points 36-41 are the subject's right eye (image left), 42-47 the subject's left eye.
* Directions are expressed in the face frame (x along the eye line) and rotated by the face's
  roll, so fields follow a tilted face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from merkit.errors import ConfigError, check_choice

Point = tuple[float, float]

#: Bilateral AUs with a displacement model; ``L``/``R`` prefixed codes act on one side.
SUPPORTED_AUS: tuple[str, ...] = (
    "1", "2", "4", "5", "6", "7", "9", "10", "12", "14", "15", "16", "17", "20", "23", "25", "26",
)

#: Default peak displacement of one AU at intensity 1, as a fraction of the interocular
#: distance (about 3 px on a 128-pixel CASME II style face crop).
DEFAULT_AMPLITUDE_FRACTION = 0.07


def _pt(values: Iterable[float]) -> Point:
    x, y = (float(v) for v in values)
    return (x, y)


@dataclass(frozen=True)
class FaceGeometry:
    """Canonical positions of facial parts, in image pixels.

    ``right``/``left`` are the subject's sides (``right_eye`` is the image-left eye on a frontal
    face, dlib points 36-41).

    Attributes:
        right_eye, left_eye: eye centres.
        eye_half_width, eye_half_height: mean half extent of the eye openings.
        right_brow_inner, right_brow_outer, left_brow_inner, left_brow_outer: brow ends.
        nose_root: top of the nose bridge (dlib 27); nose_tip: dlib 30.
        nose_half_width: half the distance between the alar bases (dlib 31, 35).
        mouth_right, mouth_left: lip corners (dlib 48, 54).
        upper_lip_top, lower_lip_bottom: outer lip contour at the middle (dlib 51, 57).
        mouth_center: middle of the lip line (mean of dlib 62, 66).
        chin: dlib 8.
        right_cheek, left_cheek: cheek prominences (below the eyes, outside the nose).
        face_center, face_half_width: midpoint and half distance of jaw points 0 and 16.
    """

    right_eye: Point
    left_eye: Point
    eye_half_width: float
    eye_half_height: float
    right_brow_inner: Point
    right_brow_outer: Point
    left_brow_inner: Point
    left_brow_outer: Point
    nose_root: Point
    nose_tip: Point
    nose_half_width: float
    mouth_right: Point
    mouth_left: Point
    upper_lip_top: Point
    lower_lip_bottom: Point
    mouth_center: Point
    chin: Point
    right_cheek: Point
    left_cheek: Point
    face_center: Point
    face_half_width: float

    @classmethod
    def from_landmarks68(cls, points: np.ndarray) -> "FaceGeometry":
        """Geometry of a face from its 68 dlib-convention landmarks.

        Args:
            points: (68, 2) array of (x, y) pixel positions (jaw 0-16, brows 17-26, nose 27-35,
                eyes 36-47, mouth 48-67).

        Raises:
            ConfigError: ``points`` is not a finite (68, 2) array.
        """
        p = np.asarray(points, dtype=np.float64)
        if p.shape != (68, 2) or not np.all(np.isfinite(p)):
            raise ConfigError(f"FaceGeometry.from_landmarks68: expected finite (68, 2) landmarks, got shape {p.shape}")
        right_eye = p[36:42].mean(axis=0)
        left_eye = p[42:48].mean(axis=0)
        eye_half_width = 0.25 * (np.linalg.norm(p[39] - p[36]) + np.linalg.norm(p[45] - p[42]))
        eye_half_height = 0.125 * (
            np.linalg.norm(p[41] - p[37]) + np.linalg.norm(p[40] - p[38])
            + np.linalg.norm(p[47] - p[43]) + np.linalg.norm(p[46] - p[44])
        )
        mouth_right, mouth_left = p[48], p[54]
        eye_axis = left_eye - right_eye
        interocular = float(np.linalg.norm(eye_axis))
        if interocular <= 0:
            raise ConfigError("FaceGeometry.from_landmarks68: the two eye centres coincide")
        unit_x = eye_axis / interocular
        cheek_offset = 0.12 * interocular * unit_x
        return cls(
            right_eye=_pt(right_eye),
            left_eye=_pt(left_eye),
            eye_half_width=float(eye_half_width),
            eye_half_height=float(max(eye_half_height, 0.05 * eye_half_width)),
            right_brow_inner=_pt(p[21]),
            right_brow_outer=_pt(p[17]),
            left_brow_inner=_pt(p[22]),
            left_brow_outer=_pt(p[26]),
            nose_root=_pt(p[27]),
            nose_tip=_pt(p[30]),
            nose_half_width=float(0.5 * np.linalg.norm(p[35] - p[31])),
            mouth_right=_pt(mouth_right),
            mouth_left=_pt(mouth_left),
            upper_lip_top=_pt(p[51]),
            lower_lip_bottom=_pt(p[57]),
            mouth_center=_pt(0.5 * (p[62] + p[66])),
            chin=_pt(p[8]),
            right_cheek=_pt(0.5 * (right_eye + mouth_right) - cheek_offset),
            left_cheek=_pt(0.5 * (left_eye + mouth_left) + cheek_offset),
            face_center=_pt(0.5 * (p[0] + p[16])),
            face_half_width=float(0.5 * np.linalg.norm(p[16] - p[0])),
        )

    @property
    def interocular(self) -> float:
        """Distance between the eye centres (pixels)."""
        return float(np.hypot(self.left_eye[0] - self.right_eye[0], self.left_eye[1] - self.right_eye[1]))

    @property
    def roll(self) -> float:
        """In-plane rotation of the face (radians): angle of the right-eye -> left-eye axis."""
        return float(np.arctan2(self.left_eye[1] - self.right_eye[1], self.left_eye[0] - self.right_eye[0]))


@dataclass(frozen=True)
class DisplacementComponents:
    """A displacement field as a sum of windowed vectors (see :func:`au_components`).

    Attributes:
        centers: (K, 2) window centres (x, y) in pixels.
        sigmas: (K, 2) window scales along the face's x and y axes (pixels); for a ``step``
            window the second value is the logistic width.
        vectors: (K, 2) displacement (dx, dy) in pixels at the window's peak.
        steps: (K,) bool, True for a jaw window (logistic step in y times a Gaussian in x).
        roll: face roll (radians) that orients the windows.
    """

    centers: np.ndarray
    sigmas: np.ndarray
    vectors: np.ndarray
    steps: np.ndarray
    roll: float

    def __len__(self) -> int:
        return len(self.centers)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The field at arbitrary points.

        Args:
            x, y: arrays of one shape ``S`` (pixel coordinates).

        Returns:
            ``S + (2,)`` float64 displacement (dx, dy).
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        out = np.zeros(x.shape + (2,), dtype=np.float64)
        if len(self) == 0:
            return out
        cos, sin = np.cos(self.roll), np.sin(self.roll)
        flat_x, flat_y = x.reshape(-1), y.reshape(-1)
        weights = np.empty((len(self), flat_x.size), dtype=np.float64)
        for k in range(len(self)):
            dx = flat_x - self.centers[k, 0]
            dy = flat_y - self.centers[k, 1]
            along = (cos * dx + sin * dy) / self.sigmas[k, 0]
            across = (-sin * dx + cos * dy) / self.sigmas[k, 1]
            if self.steps[k]:
                weights[k] = np.exp(-0.5 * along * along) / (1.0 + np.exp(-across))
            else:
                weights[k] = np.exp(-0.5 * (along * along + across * across))
        out.reshape(-1, 2)[:] = weights.T @ self.vectors
        return out

    def on_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """The field sampled at every pixel centre of an ``(H, W)`` image: (H, W, 2) float64."""
        height, width = shape
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        return self.evaluate(xs, ys)


# --------------------------------------------------------------------------- AU models
# Each entry: (anchor, sigma_x, sigma_y, direction (dx, dy), kind, side).
# anchor(g, side) -> (x, y) in the face frame relative to the part; sigmas are fractions of the
# interocular distance; ``o`` (outward sign) is -1 on the subject's right, +1 on the left.


def _side_points(g: FaceGeometry, side: str) -> dict[str, np.ndarray]:
    right = side == "R"
    return {
        "eye": np.array(g.right_eye if right else g.left_eye),
        "brow_inner": np.array(g.right_brow_inner if right else g.left_brow_inner),
        "brow_outer": np.array(g.right_brow_outer if right else g.left_brow_outer),
        "corner": np.array(g.mouth_right if right else g.mouth_left),
        "cheek": np.array(g.right_cheek if right else g.left_cheek),
    }


def _au_parts(au: str, g: FaceGeometry, side: str) -> list[tuple[np.ndarray, float, float, tuple[float, float], bool]]:
    """Components of one AU on one side (``R``/``L``) or at the midline (``C``).

    Returns (anchor point, sigma_x, sigma_y, face-frame direction, is_step) tuples; sigmas are
    in units of the interocular distance, directions have length <= 1 (relative gain).
    """
    io = g.interocular
    cos, sin = np.cos(g.roll), np.sin(g.roll)
    ux = np.array([cos, sin])  # face x axis in the image
    uy = np.array([-sin, cos])  # face y axis (down)
    o = -1.0 if side == "R" else 1.0
    parts: list[tuple[np.ndarray, float, float, tuple[float, float], bool]] = []

    def add(anchor, sx, sy, direction, step=False):
        parts.append((np.asarray(anchor, dtype=np.float64), sx, sy, direction, step))

    mouth_center = np.array(g.mouth_center)
    upper_lip = np.array(g.upper_lip_top)
    lower_lip = np.array(g.lower_lip_bottom)
    chin = np.array(g.chin)
    mouth_half_width = 0.5 * float(np.hypot(g.mouth_left[0] - g.mouth_right[0], g.mouth_left[1] - g.mouth_right[1]))
    if side == "C":
        if au == "17":
            add(0.5 * (lower_lip + chin), 0.28, 0.12, (0.0, -0.8))
            add(lower_lip, 0.25, 0.07, (0.0, -0.35))
        elif au == "23":
            add(upper_lip, 0.30, 0.09, (0.0, 0.4))
            add(lower_lip, 0.30, 0.09, (0.0, -0.4))
        elif au == "25":
            add(mouth_center - 0.10 * io * uy, 0.30, 0.08, (0.0, -0.35))
            add(mouth_center + 0.10 * io * uy, 0.30, 0.08, (0.0, 0.6))
        elif au == "26":
            add(mouth_center, 0.55, 0.07, (0.0, 1.0), True)
        elif au == "9":
            add(0.5 * (upper_lip + np.array(g.nose_tip)), 0.15, 0.07, (0.0, -0.3))
        return parts

    s = _side_points(g, side)
    eye, corner = s["eye"], s["corner"]
    eye_w, eye_h = g.eye_half_width, g.eye_half_height
    if au == "1":
        add(s["brow_inner"], 0.13, 0.11, (0.0, -0.9))
    elif au == "2":
        add(0.7 * s["brow_outer"] + 0.3 * s["brow_inner"], 0.13, 0.10, (0.15 * o, -0.99))
    elif au == "4":
        add(0.75 * s["brow_inner"] + 0.25 * s["brow_outer"], 0.13, 0.10, (-0.55 * o, 0.83))
    elif au == "5":
        add(eye - eye_h * uy, eye_w / io * 0.8, 0.09, (0.0, -0.6))
    elif au == "6":
        add(s["cheek"], 0.16, 0.14, (0.2 * o, -0.8))
        add(eye + eye_h * uy, eye_w / io * 0.8, 0.08, (0.0, -0.45))
    elif au == "7":
        add(eye + 1.3 * eye_h * uy, eye_w / io * 0.8, 0.10, (0.0, -0.6))
        add(eye - 1.3 * eye_h * uy, eye_w / io * 0.8, 0.10, (0.0, 0.4))
    elif au == "9":
        nose_side = 0.4 * np.array(g.nose_root) + 0.6 * np.array(g.nose_tip) + o * 0.7 * g.nose_half_width * ux
        add(nose_side, 0.08, 0.12, (-0.15 * o, -0.8))
        add(s["brow_inner"], 0.10, 0.08, (0.0, 0.3))
    elif au == "10":
        add(upper_lip + o * 0.4 * mouth_half_width * ux, 0.13, 0.11, (0.05 * o, -0.85))
    elif au == "12":
        add(corner, 0.12, 0.10, (0.6 * o, -0.8))
        add(0.5 * (corner + s["cheek"]), 0.14, 0.14, (0.2 * o, -0.35))
    elif au == "14":
        add(corner, 0.10, 0.09, (-0.7 * o, -0.15))
    elif au == "15":
        add(corner, 0.12, 0.11, (0.15 * o, 0.8))
        add(corner + 0.10 * io * uy, 0.12, 0.12, (0.0, 0.25))
    elif au == "16":
        add(lower_lip + o * 0.35 * mouth_half_width * ux, 0.13, 0.10, (0.1 * o, 0.75))
    elif au == "20":
        add(corner, 0.12, 0.10, (0.9 * o, 0.15))
    elif au == "23":
        add(corner, 0.08, 0.08, (-0.4 * o, 0.0))
    return parts  # 17, 25, 26 act at the midline only


def _parse_au(code: str) -> tuple[str, str]:
    """``'L12'`` -> (``'12'``, ``'L'``), ``'4'`` -> (``'4'``, ``''``)."""
    text = str(code).strip().upper()
    prefix = text[0] if text[:1] in ("L", "R") else ""
    number = text[len(prefix):]
    if number not in SUPPORTED_AUS:
        raise ConfigError(
            f"AU code {code!r} has no displacement model; expected one of {', '.join(SUPPORTED_AUS)} "
            "optionally prefixed by L or R (subject's side)"
        )
    return number, prefix


def au_components(
    aus: Mapping[str, float], geometry: FaceGeometry, *, amplitude: float | None = None
) -> DisplacementComponents:
    """The windowed-vector components of a set of AU intensities.

    Args:
        aus: AU code -> intensity (1.0 = full). Codes: ``'1'``, ``'12'`` (bilateral) or
            ``'L12'``/``'R12'`` (subject's left/right only). Midline parts of an AU (lips, chin,
            jaw) get half their weight under a unilateral code.
        geometry: the face.
        amplitude: peak displacement in pixels of an AU at intensity 1 (its strongest component);
            None: ``DEFAULT_AMPLITUDE_FRACTION`` x interocular distance.

    Raises:
        ConfigError: unknown AU code or a negative amplitude.
    """
    io = geometry.interocular
    amplitude = DEFAULT_AMPLITUDE_FRACTION * io if amplitude is None else float(amplitude)
    if amplitude < 0:
        raise ConfigError(f"au_components: amplitude must be >= 0, got {amplitude}")
    cos, sin = np.cos(geometry.roll), np.sin(geometry.roll)
    centers, sigmas, vectors, steps = [], [], [], []
    for code, intensity in aus.items():
        number, prefix = _parse_au(code)
        sides = [(prefix, 1.0), ("C", 0.5)] if prefix else [("R", 1.0), ("L", 1.0), ("C", 1.0)]
        for side, weight in sides:
            for anchor, sx, sy, (fx, fy), step in _au_parts(number, geometry, side):
                gain = amplitude * float(intensity) * weight
                centers.append(anchor)
                sigmas.append((sx * io, sy * io))
                vectors.append((gain * (cos * fx - sin * fy), gain * (sin * fx + cos * fy)))
                steps.append(step)
    if not centers:
        empty = np.zeros((0, 2))
        return DisplacementComponents(empty, empty.copy(), empty.copy(), np.zeros(0, bool), geometry.roll)
    return DisplacementComponents(
        centers=np.array(centers, dtype=np.float64),
        sigmas=np.array(sigmas, dtype=np.float64),
        vectors=np.array(vectors, dtype=np.float64),
        steps=np.array(steps, dtype=bool),
        roll=geometry.roll,
    )


def au_displacement(
    aus: Mapping[str, float], geometry: FaceGeometry, shape: tuple[int, int], *, amplitude: float | None = None
) -> np.ndarray:
    """Displacement field of AU intensities on a face, sampled at every pixel.

    Args:
        aus: AU code -> intensity (1.0 = full), e.g. ``{"6": 0.8, "12": 1.0}`` or ``{"L12": 1}``
            (``L``/``R`` = the subject's left/right; the subject's left is the image right).
        geometry: face part positions (:meth:`FaceGeometry.from_landmarks68` for a real face).
        shape: (H, W) of the image.
        amplitude: peak displacement (pixels) of one AU at intensity 1; None: 0.07 x the
            interocular distance (about 3 px on a 128-pixel face crop).

    Returns:
        (H, W, 2) float32 (dx, dy): the skin at pixel p comes from ``p - D(p)`` of the neutral
        face (backward-warp convention; D points where the skin moves).

    Raises:
        ConfigError: unknown AU code or negative amplitude.
    """
    return au_components(aus, geometry, amplitude=amplitude).on_grid(shape).astype(np.float32)


# --------------------------------------------------------------------------- emotions
#: Emotion -> list of alternative AU combinations (one is drawn per clip).
EMOTION_AUS: dict[str, tuple[tuple[str, ...], ...]] = {
    "happiness": (("6", "12"),),
    "sadness": (("1", "4", "15"),),
    "surprise": (("1", "2", "5", "26"),),
    "fear": (("1", "2", "4", "5", "7", "20", "26"),),
    "anger": (("4", "5", "7", "23"),),
    "disgust": (("9", "10"), ("9", "15", "16")),
    "contempt": (("L12", "L14"), ("R12", "R14")),
    "repression": (("14",), ("15",), ("17",), ("14", "15"), ("14", "17"), ("15", "17")),
    "others": (("4",), ("7",), ("10",), ("25",), ("20",), ("1",), ("2",)),
}

#: Emotion strings (CASME II's, lower-case, plus anger and contempt for SAMM-like sets).
EMOTIONS: tuple[str, ...] = tuple(EMOTION_AUS)


def au_sort_key(code: str) -> tuple[int, str]:
    """Order AU codes by number, then side (``4 < L12 < R12 < 14``)."""
    number, prefix = _parse_au(code)
    return int(number), prefix


def format_aus(codes: Iterable[str]) -> str:
    """CASME II ``Action Units`` cell: ``['7', '4']`` -> ``'4+7'``, ``['R14', 'R12']`` -> ``'R12+R14'``."""
    return "+".join(sorted(codes, key=au_sort_key))


def draw_aus(
    emotion: str,
    rng: np.random.Generator,
    *,
    intensity_range: tuple[float, float],
    drop_probability: float,
    extra_probability: float,
    extra_intensity_range: tuple[float, float],
) -> dict[str, float]:
    """Random AU intensities of one clip of ``emotion``.

    One of the emotion's combinations is drawn; with ``drop_probability`` one of its AUs is
    dropped (combinations of two or more), with ``extra_probability`` a weak AU from outside the
    combination is added. Intensities ~ U(intensity_range); the extra AU's ~ U(extra_intensity_range).

    Raises:
        ConfigError: unknown emotion.
    """
    check_choice("emotion with an AU model", emotion, EMOTIONS)
    options = EMOTION_AUS[emotion]
    codes = list(options[int(rng.integers(len(options)))])
    drop = rng.random() < drop_probability
    drop_index = int(rng.integers(len(codes)))
    if drop and len(codes) >= 2:
        del codes[drop_index]
    aus = {code: float(rng.uniform(*intensity_range)) for code in codes}
    add_extra = rng.random() < extra_probability
    used = {_parse_au(c)[0] for c in codes}
    pool = [au for au in SUPPORTED_AUS if au not in used]
    extra = pool[int(rng.integers(len(pool)))]
    extra_intensity = float(rng.uniform(*extra_intensity_range))
    if add_extra:
        aus[extra] = extra_intensity
    return dict(sorted(aus.items(), key=lambda item: au_sort_key(item[0])))
