"""Facial action units: parsing annotated AU codes, multi-hot vectors, and a per-frame AU stream
from landmark geometry.

AU codes as the datasets write them (CASME II ``Action Units``, SAMM ``Action Units``,
CAS(ME)^3 ``AU``): ``4+7``, ``R12A+R14A``, ``AU4+AU7``, ``L10``, ``12?``, ``4 or 7``,
``12.0`` (a number read from Excel), empty or NaN. ``L``/``R`` are the subject's left/right;
a unilateral code maps onto the same AU as the bilateral one, with its side kept.

The AU stream (MADV-Net, paper 002, section 3.2.2: ``V = V_x - V_t``, the AU vector of a
frame minus that of the neutral onset) is built from proxies measured around 68-point landmarks,
since no AU intensity estimator ships with merkit. Every AU of :data:`AU_VOCAB` has one:

* **geometric** proxies (:func:`au_proxies`): distances in a face frame (origin between the
  eyes, x along the eye-corner line, y down) in units of the inter-ocular distance, so they are
  invariant to head translation, in-plane rotation and scale, and signed so that they grow when
  their AU is active;
* **appearance** proxies (:func:`appearance_proxies`) for the actions that move no landmark but
  fold or bulge the skin: the log of the texture energy (mean absolute Laplacian of the lightly
  blurred grey frame) in a square patch placed by the landmarks: the nasolabial furrow (AU11),
  the masseter above the jaw angle (AU31) and the neck below the chin (AU21). Wrinkles and
  bulges raise the energy; the onset difference of a log is a ratio, so lighting gain cancels.
  A patch outside the frame (the neck in a tight face crop) gives no change.

Which proxy stands for which AU is :data:`AU_FROM_PROXIES`. Where geometry cannot tell two
actions apart they share a proxy (AU6/7 lower lid, AU23/24/28 lip thickness, AU26/27 jaw,
AU43/45 eye opening, AU38/39 nostril width with opposite signs); the classifier sees them as one
signal. SynthME animates AU14 and AU16 (among others), which the tests use as ground truth.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np

from merkit.data.annotations import au_term_groups
from merkit.errors import AnnotationError, ConfigError, check_choice

log = logging.getLogger(__name__)

#: The AU vocabulary: the facial actions coded in CASME II, SAMM, CAS(ME)^2 and CAS(ME)^3
#: (head and eye positions, visibility and gross-behaviour codes are not part of it).
AU_VOCAB: tuple[int, ...] = (
    1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 23, 24, 25, 26, 27, 28,
    31, 34, 38, 39, 43, 45,
)

#: Every code FACS 2002 defines (AUs 1-46 but 3, 50 speech, head 51-58, eyes 61-66, 69,
#: visibility 70-75, gross behaviour 80-98). Codes outside AU_VOCAB but in here are valid
#: annotations that the vocabulary leaves out: they are skipped, never an error.
FACS_CODES: frozenset[int] = frozenset(
    set(range(1, 47)) - {3} | {50} | set(range(51, 59)) | set(range(61, 67)) | {69}
    | set(range(70, 76)) | set(range(80, 99))
)

_TOKEN = re.compile(r"^(?P<side>[LR])?(?P<number>\d+)(?:\.0+)?(?P<intensity>[A-E])?(?P<uncertain>\?)?$")


@dataclass(frozen=True)
class AUCode:
    """One annotated action unit.

    Attributes:
        number: FACS AU number (12 for ``R12A``).
        side: ``L``/``R`` (subject's side) for a unilateral code, None for bilateral.
        intensity: FACS intensity letter ``A`` (trace) .. ``E`` (maximum), None if not coded.
        uncertain: the annotator marked it with ``?``, or it is one of ``or`` alternatives.
    """

    number: int
    side: Literal["L", "R"] | None = None
    intensity: str | None = None
    uncertain: bool = False

    @property
    def name(self) -> str:
        """``AU12`` (side-free)."""
        return f"AU{self.number}"

    @property
    def code(self) -> str:
        """``R12`` / ``12``: the form SynthME and the datasets use."""
        return f"{self.side or ''}{self.number}"

    def __str__(self) -> str:
        return f"{self.code}{self.intensity or ''}{'?' if self.uncertain else ''}"


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (str, bytes)) else False
    except (TypeError, ValueError):
        return False


def _as_text(value: object, file: str | None, row: int | None) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # Excel turns a lone '12' into 12.0
    if isinstance(value, str):
        return value
    raise AnnotationError(
        f"AU string {value!r}: expected AU codes like '4+7' or 'R12A', or a whole AU number", file=file, row=row
    )


def parse_au_string(
    text: object,
    *,
    unknown: Literal["raise", "skip"] = "raise",
    alternatives: Literal["both", "first"] = "both",
    skipped: list[str] | None = None,
    file: str | None = None,
    row: int | None = None,
) -> list[AUCode]:
    """Parse an annotation cell of AU codes.

    Accepted: ``4+7``, ``AU4+AU7``, ``AU 4, AU 7``, ``R12A+L14``, ``12?``, ``(12)``, ``4 or 7``,
    ``4/7``, ``12.0`` and ``12`` (numbers from Excel), lower case; None, NaN, empty, ``-``,
    ``none``, ``n/a`` and a lone ``?`` mean no AU.

    ``or`` / ``/`` alternatives: the annotator could not decide between them. With
    ``alternatives="both"`` (default) every alternative is kept, marked ``uncertain``, so a
    multi-hot vector covers each possible reading; ``"first"`` keeps the first only (also
    marked uncertain).

    Valid FACS codes outside :data:`AU_VOCAB` (head/eye positions 51-66, gross behaviour ...)
    are skipped without error. Codes FACS does not define and unreadable tokens raise, or with
    ``unknown="skip"`` are skipped. Skipped tokens are logged and appended to ``skipped``.

    Args:
        text: the cell value (str, int, float, None, NaN).
        file, row: named in the error message.

    Returns:
        the AU codes in cell order, without duplicates (same number, side and flags).

    Raises:
        AnnotationError: an unknown or unreadable code under ``unknown="raise"``.
    """
    check_choice("unknown", unknown, ("raise", "skip"))
    check_choice("alternatives", alternatives, ("both", "first"))
    if _is_missing(text):
        return []
    raw = _as_text(text, file, row)
    codes: list[AUCode] = []
    for group in au_term_groups(raw):
        is_alternative = len(group) > 1
        for token in group[:1] if (is_alternative and alternatives == "first") else group:
            if token == "?":
                continue
            code = _parse_token(token, raw, unknown, skipped, file, row)
            if code is None:
                continue
            if is_alternative and not code.uncertain:
                code = AUCode(code.number, code.side, code.intensity, True)
            if code not in codes:
                codes.append(code)
    return codes


def _parse_token(
    token: str, raw: str, unknown: str, skipped: list[str] | None, file: str | None, row: int | None
) -> AUCode | None:
    match = _TOKEN.match(token)
    number = int(match["number"]) if match else None
    if match and number in AU_VOCAB:
        return AUCode(number, match["side"], match["intensity"], bool(match["uncertain"]))
    if match and number in FACS_CODES:
        log.debug("AU %s in %r is a FACS code outside the AU vocabulary; skipped", token, raw)
    elif unknown == "raise":
        what = f"AU {number} is not a FACS action unit" if match else f"cannot read {token!r}"
        raise AnnotationError(
            f"AU string {raw!r}: {what}; expected codes like '4', 'AU12', 'R12A', '12?' joined by '+'",
            file=file,
            row=row,
        )
    else:
        log.warning("AU string %r: unknown code %r skipped", raw, token)
    if skipped is not None:
        skipped.append(token)
    return None


def au_multi_hot(
    codes: Iterable[AUCode | str],
    *,
    vocab: tuple[int, ...] = AU_VOCAB,
    uncertain_value: float = 1.0,
) -> np.ndarray:
    """Multi-hot AU vector.

    Args:
        codes: :class:`AUCode` objects or AU strings (each parsed with :func:`parse_au_string`,
            e.g. a Sample's ``aus``). Both sides of an AU set the same entry.
        uncertain_value: value of an uncertain code (``?`` or an ``or`` alternative); a
            certain code of the same AU wins.

    Returns:
        (A,) float32 with A = len(vocab), 1 where the AU is annotated.

    Raises:
        AnnotationError: a code outside ``vocab``.
    """
    vector = np.zeros(len(vocab), dtype=np.float32)
    index = {number: i for i, number in enumerate(vocab)}
    for item in codes:
        parsed = parse_au_string(item) if isinstance(item, str) else [item]
        for code in parsed:
            if code.number not in index:
                raise AnnotationError(f"AU {code} is not in the vocabulary {vocab}")
            value = uncertain_value if code.uncertain else 1.0
            vector[index[code.number]] = max(vector[index[code.number]], value)
    return vector


def au_code_view(sample, vocab: tuple[int, ...] = AU_VOCAB) -> np.ndarray:
    """The ``au_codes`` view: the clip's annotated AUs as a multi-hot vector over ``vocab``.

    Every coded AU counts once (sides and intensities ignored; uncertain codes count as coded);
    codes outside ``vocab`` are left out. A clip without any AU code (SMIC codes none) gets an
    all-NaN vector, so that a loss can tell "not coded" from "coded as absent".

    Args:
        sample: a :class:`~merkit.data.Sample` (its ``aus``).

    Returns:
        (len(vocab),) float32.
    """
    numbers = {code.number for text in sample.aus for code in parse_au_string(text, unknown="skip")}
    numbers &= set(vocab)
    if not numbers:
        return np.full(len(vocab), np.nan, dtype=np.float32)
    return np.array([1.0 if number in numbers else 0.0 for number in vocab], dtype=np.float32)


# --------------------------------------------------------------------------- geometric proxies

#: Names of the landmark proxies, in column order of :func:`au_proxies`. ``_r``/``_l`` are the
#: subject's right (dlib 36-41, image left) / left side.
AU_PROXY_NAMES: tuple[str, ...] = (
    "inner_brow_raise_r", "inner_brow_raise_l",  # AU1: inner brow height (dlib 21 / 22)
    "outer_brow_raise_r", "outer_brow_raise_l",  # AU2: outer brow height (17-18 / 25-26)
    "brow_lower",  # AU4: minus the gap between the inner brow ends (21-22)
    "upper_lid_raise_r", "upper_lid_raise_l",  # AU5: upper lid height (37-38 / 43-44)
    "lower_lid_raise_r", "lower_lid_raise_l",  # AU7, AU6: lower lid height (40-41 / 46-47)
    "eye_open_r", "eye_open_l",  # AU43/45 (-): lid-to-lid distance
    "nose_wrinkle",  # AU9: height of the nose wings (31, 35)
    "upper_lip_raise",  # AU10: height of the upper lip peaks (50, 52)
    "lip_corner_pull_r", "lip_corner_pull_l",  # AU12: lip corner height (48 / 54)
    "lip_corner_depress_r", "lip_corner_depress_l",  # AU15: corner below the lip line (62, 66)
    "lip_stretch",  # AU20: mouth width (48-54)
    "lip_press",  # AU23/24: minus the lip thickness
    "lips_part",  # AU25: inner lip gap (62-66)
    "jaw_drop",  # AU26/27: chin depth (8)
    "chin_raise",  # AU17: height of the lower lip and the chin (57, 8)
    "lip_corner_in_r", "lip_corner_in_l",  # AU14: lip corner pulled toward the midline (48 / 54)
    "lower_lip_depress",  # AU16: lower lip (56-58) down toward the chin (8)
    "nose_width",  # AU38 (+) / AU39 (-): distance between the nostril wings (31-35)
    "cheek_width",  # AU34: face outline width at cheek level (2-14)
)

#: Names of the appearance proxies, in column order of :func:`appearance_proxies`.
APPEARANCE_PROXY_NAMES: tuple[str, ...] = (
    "nasolabial_furrow_r", "nasolabial_furrow_l",  # AU11: between the nose wing and the lip corner
    "masseter_r", "masseter_l",  # AU31: inside the jaw outline above the jaw angle
    "neck_texture",  # AU21: below the chin
)

#: AU number -> (proxy name, sign) pairs whose signed mean stands for that AU's intensity
#: (geometric names from :data:`AU_PROXY_NAMES`, appearance names from
#: :data:`APPEARANCE_PROXY_NAMES`). Every AU of :data:`AU_VOCAB` is a key.
AU_FROM_PROXIES: dict[int, tuple[tuple[str, float], ...]] = {
    1: (("inner_brow_raise_r", 1.0), ("inner_brow_raise_l", 1.0)),
    2: (("outer_brow_raise_r", 1.0), ("outer_brow_raise_l", 1.0)),
    4: (("brow_lower", 1.0),),
    5: (("upper_lid_raise_r", 1.0), ("upper_lid_raise_l", 1.0)),
    6: (("lower_lid_raise_r", 1.0), ("lower_lid_raise_l", 1.0)),  # the cheek pushes the lower lid up
    7: (("lower_lid_raise_r", 1.0), ("lower_lid_raise_l", 1.0)),
    9: (("nose_wrinkle", 1.0),),
    10: (("upper_lip_raise", 1.0),),
    11: (("nasolabial_furrow_r", 1.0), ("nasolabial_furrow_l", 1.0)),  # appearance: the furrow deepens
    12: (("lip_corner_pull_r", 1.0), ("lip_corner_pull_l", 1.0)),
    13: (("lip_corner_pull_r", 1.0), ("lip_corner_pull_l", 1.0), ("lip_stretch", -1.0)),  # corners up AND in
    14: (("lip_corner_in_r", 1.0), ("lip_corner_in_l", 1.0)),
    15: (("lip_corner_depress_r", 1.0), ("lip_corner_depress_l", 1.0)),
    16: (("lower_lip_depress", 1.0),),
    17: (("chin_raise", 1.0),),
    18: (("lip_stretch", -1.0), ("lip_press", -1.0)),  # pucker: a narrower mouth with fuller lips
    20: (("lip_stretch", 1.0),),
    21: (("neck_texture", 1.0),),  # appearance: neck cords
    22: (("lip_stretch", -1.0), ("lips_part", 1.0)),  # funnel: narrower and parted
    23: (("lip_press", 1.0),),
    24: (("lip_press", 1.0),),
    25: (("lips_part", 1.0),),
    26: (("jaw_drop", 1.0),),
    27: (("jaw_drop", 1.0),),
    28: (("lip_press", 1.0),),  # the lips vanish into the mouth: thinner, as pressed lips
    31: (("masseter_r", 1.0), ("masseter_l", 1.0)),  # appearance: the masseter bulges
    34: (("cheek_width", 1.0),),
    38: (("nose_width", 1.0),),
    39: (("nose_width", -1.0),),
    43: (("eye_open_r", -1.0), ("eye_open_l", -1.0)),
    45: (("eye_open_r", -1.0), ("eye_open_l", -1.0)),
}


def face_frame_coordinates(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks in the face frame: origin at the midpoint between the eyes, x along the line
    from the subject's right eye to the left one (eye corners 36, 39 / 42, 45, which facial
    actions barely move), y perpendicular and down, unit = the distance between the two eyes'
    corner midpoints (inter-ocular distance).

    Args:
        landmarks: (..., 68, 2) image coordinates.

    Returns:
        (..., 68, 2) float64.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    right = 0.5 * (points[..., 36, :] + points[..., 39, :])
    left = 0.5 * (points[..., 42, :] + points[..., 45, :])
    axis = left - right
    interocular = np.linalg.norm(axis, axis=-1, keepdims=True)
    ux = axis / interocular
    uy = np.stack([-ux[..., 1], ux[..., 0]], axis=-1)
    relative = points - (0.5 * (left + right))[..., None, :]
    x = (relative * ux[..., None, :]).sum(-1)
    y = (relative * uy[..., None, :]).sum(-1)
    return np.stack([x, y], axis=-1) / interocular[..., None]


def au_proxies(landmarks: np.ndarray) -> np.ndarray:
    """Geometric AU proxies of each frame (columns: :data:`AU_PROXY_NAMES`).

    Args:
        landmarks: (T, 68, 2) or (68, 2) dlib-order landmarks in pixels.

    Returns:
        (T, P) or (P,) float32, in inter-ocular units; each grows with its AU.
    """
    points = face_frame_coordinates(landmarks)
    x, y = points[..., 0], points[..., 1]

    def mean_y(*indices: int) -> np.ndarray:
        return y[..., list(indices)].mean(axis=-1)

    lip_line = mean_y(62, 66)
    columns = [
        -y[..., 21], -y[..., 22],
        -mean_y(17, 18), -mean_y(25, 26),
        -(x[..., 22] - x[..., 21]),
        -mean_y(37, 38), -mean_y(43, 44),
        -mean_y(40, 41), -mean_y(46, 47),
        0.5 * (y[..., 41] - y[..., 37] + y[..., 40] - y[..., 38]),
        0.5 * (y[..., 47] - y[..., 43] + y[..., 46] - y[..., 44]),
        -mean_y(31, 35),
        -mean_y(50, 52),
        -y[..., 48], -y[..., 54],
        y[..., 48] - lip_line, y[..., 54] - lip_line,
        np.hypot(x[..., 54] - x[..., 48], y[..., 54] - y[..., 48]),
        -((y[..., 62] - y[..., 51]) + (y[..., 57] - y[..., 66])),
        y[..., 66] - y[..., 62],
        y[..., 8],
        -mean_y(57, 8),
        x[..., 48], -x[..., 54],
        mean_y(56, 57, 58) - y[..., 8],
        np.hypot(x[..., 35] - x[..., 31], y[..., 35] - y[..., 31]),
        np.hypot(x[..., 14] - x[..., 2], y[..., 14] - y[..., 2]),
    ]
    return np.stack(columns, axis=-1).astype(np.float32)


#: Appearance patches: (landmark weights of the centre, offset along the face x / y axes and
#: half side, both in inter-ocular distances). ``x`` is the subject's right-to-left eye axis,
#: so the subject's right side lies at ``-x``.
_PATCHES: dict[str, tuple[dict[int, float], tuple[float, float], float]] = {
    "nasolabial_furrow_r": ({31: 0.5, 48: 0.5}, (-0.1, 0.0), 0.1),
    "nasolabial_furrow_l": ({35: 0.5, 54: 0.5}, (0.1, 0.0), 0.1),
    "masseter_r": ({3: 0.7, 48: 0.3}, (0.0, 0.0), 0.12),
    "masseter_l": ({13: 0.7, 54: 0.3}, (0.0, 0.0), 0.12),
    "neck_texture": ({8: 1.0}, (0.0, 0.3), 0.15),
}
_MIN_PATCH_FRACTION = 0.5  # a patch less than half inside the frame (the neck in a tight crop) gives no value
_ENERGY_FLOOR = 0.5  # grey levels: keeps the log finite and flat skin quiet
#: Scale of the appearance stream: a doubling of the texture energy (log 2) becomes 0.07, the
#: landmark displacement (in inter-ocular distances) of a full-intensity SynthME action, so the
#: appearance channels do not drown the geometric ones in the AU encoder's first layer.
APPEARANCE_SCALE = 0.1


def texture_energy(grey: np.ndarray) -> np.ndarray:
    """Mean-free texture energy map of one grey frame: ``|Laplacian(Gaussian_1px(grey))|``.

    Args:
        grey: (H, W) grey levels (uint8 or float).

    Returns:
        (H, W) float32.
    """
    import cv2

    blurred = cv2.GaussianBlur(np.asarray(grey, dtype=np.float32), (0, 0), 1.0)
    return np.abs(cv2.Laplacian(blurred, cv2.CV_32F, ksize=3))


def patch_boxes(landmarks: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """Centre (x, y) in pixels and half side in pixels of every appearance patch.

    Args:
        landmarks: (68, 2) dlib-order landmarks in pixels.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    right = 0.5 * (points[36] + points[39])
    left = 0.5 * (points[42] + points[45])
    interocular = float(np.linalg.norm(left - right))
    ux = (left - right) / interocular
    uy = np.array([-ux[1], ux[0]])
    boxes = {}
    for name, (weights, (dx, dy), half) in _PATCHES.items():
        centre = sum(w * points[i] for i, w in weights.items()) + interocular * (dx * ux + dy * uy)
        boxes[name] = (centre, half * interocular)
    return boxes


def appearance_proxies(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Appearance AU proxies of each frame (columns: :data:`APPEARANCE_PROXY_NAMES`).

    Each is ``log(floor + mean texture energy)`` over an axis-aligned square patch placed by the
    frame's landmarks (:func:`patch_boxes`); the part of a patch outside the frame is left out,
    and a patch less than half inside gives NaN.

    Args:
        frames: (T, H, W, 3) uint8 RGB or (T, H, W) grey.
        landmarks: (T, 68, 2) landmarks of those frames, in pixels.

    Returns:
        (T, Q) float32; NaN where less than half a patch lies in the frame.
    """
    import cv2

    frames = np.asarray(frames)
    landmarks = np.asarray(landmarks)
    if frames.ndim not in (3, 4) or len(frames) != len(landmarks):
        raise ConfigError(f"appearance_proxies expects (T, H, W[, 3]) frames and (T, 68, 2) landmarks, got "
                          f"{frames.shape} and {landmarks.shape}")
    out = np.full((len(frames), len(APPEARANCE_PROXY_NAMES)), np.nan, dtype=np.float32)
    for t, (frame, points) in enumerate(zip(frames, landmarks)):
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        energy = texture_energy(grey)
        height, width = energy.shape
        boxes = patch_boxes(points)
        for q, name in enumerate(APPEARANCE_PROXY_NAMES):
            (cx, cy), half = boxes[name]
            left, right = int(np.floor(cx - half)), int(np.ceil(cx + half)) + 1
            top, bottom = int(np.floor(cy - half)), int(np.ceil(cy + half)) + 1
            x0, x1, y0, y1 = max(0, left), min(width, right), max(0, top), min(height, bottom)
            inside = max(0, x1 - x0) * max(0, y1 - y0)
            if inside > 0 and inside >= _MIN_PATCH_FRACTION * (right - left) * (bottom - top):
                out[t, q] = np.log(_ENERGY_FLOOR + float(energy[y0:y1, x0:x1].mean()))
    return out


def appearance_stream(frames: np.ndarray, landmarks: np.ndarray, onset_index: int = 0) -> np.ndarray:
    """Appearance proxies minus the onset frame's: ``APPEARANCE_SCALE`` times the log ratio of
    the texture energies.

    A patch missing from a frame or from the onset frame gives 0 (no change) there.

    Returns:
        (T, Q) float32, row ``onset_index`` is zero.
    """
    proxies = appearance_proxies(frames, landmarks)
    return (APPEARANCE_SCALE * np.nan_to_num(proxies - proxies[onset_index], nan=0.0)).astype(np.float32)


def au_stream(landmarks_seq: np.ndarray, onset_index: int = 0) -> np.ndarray:
    """Per-frame proxies minus the onset frame's (MADV-Net's ``V = V_x - V_t``).

    Row ``apex`` is the apex - onset difference.

    Args:
        landmarks_seq: (T, 68, 2).

    Returns:
        (T, P) float32, row ``onset_index`` is zero.
    """
    proxies = au_proxies(np.asarray(landmarks_seq))
    if proxies.ndim != 2:
        raise ConfigError(f"au_stream expects (T, 68, 2) landmarks, got {np.shape(landmarks_seq)}")
    return proxies - proxies[onset_index]


def au_vocab_intensities(stream: np.ndarray, vocab: tuple[int, ...] = AU_VOCAB,
                         appearance: np.ndarray | None = None) -> np.ndarray:
    """Map proxy streams onto the AU vocabulary (:data:`AU_FROM_PROXIES`).

    Args:
        stream: (T, P) geometric proxies from :func:`au_stream` (or :func:`au_proxies`).
        appearance: (T, Q) from :func:`appearance_stream`; None: the appearance AUs (11, 21, 31)
            are zero.

    Returns:
        (T, A) float32.
    """
    stream = np.asarray(stream, dtype=np.float32)
    columns = {name: stream[..., i] for i, name in enumerate(AU_PROXY_NAMES)}
    if appearance is not None:
        appearance = np.asarray(appearance, dtype=np.float32)
        columns.update({name: appearance[..., i] for i, name in enumerate(APPEARANCE_PROXY_NAMES)})
    out = np.zeros(stream.shape[:-1] + (len(vocab),), dtype=np.float32)
    for a, number in enumerate(vocab):
        pairs = [(name, sign) for name, sign in AU_FROM_PROXIES.get(number, ()) if name in columns]
        if pairs:
            out[..., a] = np.mean([sign * columns[name] for name, sign in pairs], axis=0)
    return out


def au_view(sample, frames: np.ndarray, positions: np.ndarray, *, source: Literal["dlib", "synthme"] = "dlib",
            transforms: np.ndarray | None = None) -> np.ndarray:
    """The ``au`` view of a sample: per-frame AU intensities minus the onset's, (T, A).

    Args:
        sample: the :class:`~merkit.data.Sample`.
        frames: (N, H, W, 3) uint8 onset..offset course of the sample (``frames[0]`` = onset).
        positions: (T,) positions into ``frames``; the first is the onset.
        source: ``dlib``: landmarks tracked on ``frames[positions]`` (one detection on the
            first); ``synthme``: SynthME's exact landmarks of the same frames (read from the
            clip's ``synthme_truth.npz``, :mod:`merkit.data.synthme.truth`).
        transforms: (N, 2, 3) maps from the dataset's frames to ``frames`` (the face step's), so
            that ``synthme`` landmarks land on the cropped frames; None: no face step.

    Returns:
        (T, len(AU_VOCAB)) float32: :func:`au_vocab_intensities` of the geometric
        :func:`au_stream` and the :func:`appearance_stream` of ``frames[positions]``.

    Raises:
        FaceNotFoundError: ``dlib`` found no face on the first frame.
        ConfigError: unknown source.
        DatasetError: ``synthme`` on a SynthME clip without its ground-truth file.
    """
    positions = np.asarray(positions)
    if source == "dlib":
        from merkit.preprocess.face import track_landmarks

        landmarks = track_landmarks(frames[positions], sample_id=sample.sample_id)
    elif source == "synthme":
        from merkit.preprocess.depth import synth_truth_of

        truth = synth_truth_of(sample)
        landmarks = truth.landmarks[truth.positions([sample.onset_frame])[0] + positions]
        if transforms is not None:
            from merkit.preprocess.face import apply_transform

            landmarks = np.stack([apply_transform(transforms[int(p)], points) for p, points in zip(positions, landmarks)])
    else:
        raise ConfigError(f"unknown AU source {source!r}; expected 'dlib' or 'synthme'")
    appearance = appearance_stream(frames[positions], landmarks, onset_index=0)
    return au_vocab_intensities(au_stream(landmarks, onset_index=0), appearance=appearance)
