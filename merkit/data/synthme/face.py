"""Procedural faces of SynthME: per-subject identity, neutral image, 68 landmarks and depth.

A face is drawn analytically (anti-aliased soft masks) on a canvas padded by ``pad`` pixels on
every side, so that warping never samples outside it. Everything is a function of a
:class:`FaceIdentity` (proportions as fractions of the image size, colours) and of textures
drawn once per subject: the same identity gives the same face in every clip of the subject.
The 68 dlib-convention landmarks are computed from the very curves used to draw the parts.

Coordinates: image pixels of the *unpadded* output image (pixel centres at integers, x right,
y down); canvas pixel ``[i, j]`` sits at ``(x, y) = (j - pad, i - pad)``. "Right"/"left" name
the subject's sides: the subject's right eye is on the image left (dlib 36-41).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

REFERENCE_SIZE = 128  # sizes below (noise scales, edge widths) are tuned at this face size


def _coverage(signed_distance: np.ndarray, width: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage of a shape from a signed distance (negative inside), in [0, 1]."""
    return np.clip(0.5 - signed_distance / width, 0.0, 1.0)


def _blend(image: np.ndarray, color, alpha: np.ndarray) -> None:
    """In place: ``image = image + alpha * (color - image)``; color is RGB or an (H, W, 3) array."""
    image += alpha[..., None] * (np.asarray(color, dtype=np.float32) - image)


def _shade(image: np.ndarray, factor: np.ndarray) -> None:
    """In place: multiply RGB by a per-pixel factor."""
    image *= factor[..., None]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_x: float, sigma_y: float | None = None) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, (H, W) float32."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    noise = rng.standard_normal(shape).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(sigma_x, 0.3), sigmaY=max(sigma_y, 0.3), borderType=cv2.BORDER_REFLECT)
    return blurred / max(float(blurred.std()), 1e-6)


def _polyline_distance(xs: np.ndarray, ys: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from every (x, y) to a polyline given by (N, 2) points."""
    best = np.full(xs.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        length2 = max(dx * dx + dy * dy, 1e-12)
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / length2, 0.0, 1.0)
        best = np.minimum(best, np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)))
    return best


def _lid_shape(t: np.ndarray) -> np.ndarray:
    """Profile of an eyelid / lip contour over t in [-1, 1]: 1 in the middle, 0 at the corners."""
    return np.clip(1.0 - t * t, 0.0, None) ** 0.7


@dataclass(frozen=True)
class FaceIdentity:
    """What makes one subject look like themself. Lengths are fractions of the image size.

    Attributes (selection): ``center``, ``half_width``, ``half_height``, ``exponent`` and
    ``jaw_taper`` of the superellipse outline; eye, brow, nose and mouth placement and size;
    ``skin``, ``hair``, ``lip``, ``iris``, ``background`` RGB colours in [0, 1]; ``asymmetry``
    shifts the subject's left features vertically.
    """

    center: tuple[float, float]
    half_width: float
    half_height: float
    exponent: float
    jaw_taper: float
    hairline: float
    hairline_curve: float
    eye_y: float
    eye_dx: float
    eye_half_width: float
    eye_upper: float
    eye_lower: float
    eye_tilt: float
    iris_radius: float
    gaze: tuple[float, float]
    brow_inner_dx: float
    brow_outer_dx: float
    brow_height: float
    brow_outer_rise: float
    brow_arch: float
    brow_thickness: float
    nose_tip_y: float
    nose_half_width: float
    mouth_y: float
    mouth_half_width: float
    lip_upper: float
    lip_lower: float
    mouth_curve: float
    asymmetry: float
    light: tuple[float, float]
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    lip: tuple[float, float, float]
    iris: tuple[float, float, float]
    background: tuple[float, float, float]
    blush: float
    freckles: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "FaceIdentity":
        """A random identity (proportions of a frontal face crop like CASME II's ``Cropped``)."""
        u = rng.uniform
        cx, cy = 0.5 + rng.normal(0, 0.01), 0.45 + rng.normal(0, 0.01)
        half_width, half_height = u(0.40, 0.46), u(0.49, 0.53)
        eye_y = cy - half_height * u(0.12, 0.19)
        eye_dx = half_width * u(0.37, 0.42)
        nose_tip_y = eye_y + u(0.19, 0.23)
        tone = u(0.0, 0.75)
        light_skin, dark_skin = np.array([0.93, 0.78, 0.67]), np.array([0.50, 0.34, 0.25])
        skin = (1 - tone) * light_skin + tone * dark_skin + rng.normal(0, 0.015, 3)
        hair = np.array([0.10, 0.07, 0.05]) + u(0.0, 0.25) * np.array([0.55, 0.40, 0.25])
        lip = 0.5 * skin + 0.5 * np.array([0.72, 0.28, 0.30]) + rng.normal(0, 0.015, 3)
        irises = np.array([[0.25, 0.15, 0.08], [0.12, 0.08, 0.05], [0.35, 0.30, 0.15], [0.25, 0.35, 0.50]])
        iris = irises[int(rng.integers(len(irises)))] * u(0.8, 1.2)
        background = np.full(3, u(0.55, 0.85)) + rng.normal(0, 0.03, 3)
        return cls(
            center=(float(cx), float(cy)),
            half_width=float(half_width),
            half_height=float(half_height),
            exponent=float(u(2.1, 2.8)),
            jaw_taper=float(u(0.15, 0.35)),
            hairline=float(cy - half_height * u(0.62, 0.85)),
            hairline_curve=float(u(0.03, 0.08)),
            eye_y=float(eye_y),
            eye_dx=float(eye_dx),
            eye_half_width=float(u(0.058, 0.07)),
            eye_upper=float(u(0.026, 0.033)),
            eye_lower=float(u(0.014, 0.019)),
            eye_tilt=float(u(-0.002, 0.008)),
            iris_radius=float(u(0.024, 0.028)),
            gaze=(float(rng.normal(0, 0.004)), float(rng.normal(0, 0.002))),
            brow_inner_dx=float(u(0.045, 0.065)),
            brow_outer_dx=float(eye_dx + u(0.06, 0.085)),
            brow_height=float(u(0.075, 0.095)),
            brow_outer_rise=float(u(-0.015, 0.01)),
            brow_arch=float(u(0.008, 0.022)),
            brow_thickness=float(u(0.022, 0.032)),
            nose_tip_y=float(nose_tip_y),
            nose_half_width=float(u(0.05, 0.064)),
            mouth_y=float(nose_tip_y + u(0.13, 0.16)),
            mouth_half_width=float(u(0.085, 0.11)),
            lip_upper=float(u(0.02, 0.028)),
            lip_lower=float(u(0.026, 0.036)),
            mouth_curve=float(u(-0.006, 0.006)),
            asymmetry=float(rng.normal(0, 0.003)),
            light=(float(u(-0.6, 0.6)), float(u(-0.6, 0.2))),
            skin=tuple(float(v) for v in np.clip(skin, 0.05, 1.0)),
            hair=tuple(float(v) for v in hair),
            lip=tuple(float(v) for v in np.clip(lip, 0.05, 1.0)),
            iris=tuple(float(v) for v in np.clip(iris, 0.0, 1.0)),
            background=tuple(float(v) for v in np.clip(background, 0.0, 1.0)),
            blush=float(u(0.0, 0.08)),
            freckles=int(rng.integers(15, 90)),
        )


@dataclass
class ProceduralFace:
    """A subject's face rendered at one size.

    Attributes:
        identity: the subject's identity.
        size: output image side (pixels); the face image is square.
        pad: canvas margin (pixels) on every side.
        base: (size + 2 pad, size + 2 pad, 3) float32 RGB in [0, 1], the face without eyes.
        depth: (size + 2 pad, size + 2 pad) float32 depth in [0, 1] (nearer = larger, background 0).
    """

    identity: FaceIdentity
    size: int
    pad: int
    base: np.ndarray = field(init=False, repr=False)
    depth: np.ndarray = field(init=False, repr=False)
    _eye_texture: np.ndarray = field(init=False, repr=False)

    @classmethod
    def build(cls, identity: FaceIdentity, size: int, rng: np.random.Generator) -> "ProceduralFace":
        """Draw the face (textures come from ``rng``: call with the subject's generator)."""
        pad = max(8, int(round(0.08 * size)))
        face = cls(identity=identity, size=size, pad=pad)
        face.base, face._eye_texture = face._draw_base(rng)
        face.depth = face._draw_depth()
        return face

    # ------------------------------------------------------------------ geometry (pixels)
    @property
    def scale(self) -> float:
        return self.size / REFERENCE_SIZE

    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.size + 2 * self.pad
        ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
        return xs - self.pad, ys - self.pad

    def _px(self, fraction: float) -> float:
        return fraction * self.size

    def _side_y(self, side: str) -> float:
        """Vertical offset (pixels) of the subject's left/right features (asymmetry)."""
        return self._px(self.identity.asymmetry) * (0.5 if side == "L" else -0.5)

    def _outline_half_width(self, dy: np.ndarray) -> np.ndarray:
        """Half width of the face outline's superellipse at vertical offset dy from the centre."""
        idn = self.identity
        below = np.clip(dy / self._px(idn.half_height), 0.0, None)
        return self._px(idn.half_width) * (1.0 - idn.jaw_taper * below ** 2)

    def _outline_value(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Superellipse radius: < 1 inside the face outline, 1 on it."""
        idn = self.identity
        dx = xs - self._px(idn.center[0])
        dy = ys - self._px(idn.center[1])
        a = self._outline_half_width(dy)
        b = self._px(idn.half_height)
        n = idn.exponent
        return (np.abs(dx / a) ** n + np.abs(dy / b) ** n) ** (1.0 / n)

    def _eye(self, side: str) -> dict[str, float]:
        idn = self.identity
        o = -1.0 if side == "R" else 1.0
        return {
            "x": self._px(idn.center[0] + o * idn.eye_dx), "y": self._px(idn.eye_y) + self._side_y(side),
            "w": self._px(idn.eye_half_width), "up": self._px(idn.eye_upper), "low": self._px(idn.eye_lower),
            "tilt": self._px(idn.eye_tilt), "o": o,
        }

    def _eye_curves(self, side: str, xs: np.ndarray, closure: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, upper lid y, lower lid y) at image x; ``closure`` in [0, 1] lowers the upper lid."""
        e = self._eye(side)
        t = (xs - e["x"]) / e["w"]
        tc = np.clip(t, -1.0, 1.0)
        # outer corner raised by ``tilt``: outward direction is o
        middle = e["y"] - e["tilt"] * tc * e["o"]
        upper = middle - e["up"] * _lid_shape(tc)
        lower = middle + e["low"] * _lid_shape(tc)
        upper = upper + closure * (lower - upper)
        return t, upper, lower

    def _brow_curve(self, side: str, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, centre y, thickness) of a brow at t in [0, 1] from its inner to its outer end."""
        idn = self.identity
        o = -1.0 if side == "R" else 1.0
        cx = self._px(idn.center[0])
        x_inner, x_outer = cx + o * self._px(idn.brow_inner_dx), cx + o * self._px(idn.brow_outer_dx)
        y_inner = self._px(idn.eye_y - idn.brow_height) + self._side_y(side)
        y_outer = y_inner - self._px(idn.brow_outer_rise)
        xs = x_inner + t * (x_outer - x_inner)
        ys = y_inner + t * (y_outer - y_inner) - self._px(idn.brow_arch) * np.sin(np.pi * np.clip(t, 0, 1) ** 0.8)
        thickness = self._px(idn.brow_thickness) * (1.0 - 0.45 * np.clip(t, 0, 1))
        return xs, ys, thickness

    def _mouth_curves(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(t, lip line y, upper lip top y, lower lip bottom y) at image x."""
        idn = self.identity
        mx, my = self._px(idn.center[0]), self._px(idn.mouth_y)
        t = (xs - mx) / self._px(idn.mouth_half_width)
        tc = np.clip(t, -1.0, 1.0)
        line = my + self._px(idn.mouth_curve) * tc * tc + 0.5 * self._side_y("L") * tc
        bow = 1.0 - 0.25 * np.exp(-((tc / 0.13) ** 2))
        upper = line - self._px(idn.lip_upper) * _lid_shape(tc) * bow
        lower = line + self._px(idn.lip_lower) * np.clip(1.0 - tc * tc, 0.0, None) ** 0.6
        return t, line, upper, lower

    def _nose(self) -> dict[str, float]:
        idn = self.identity
        return {
            "x": self._px(idn.center[0]), "root": self._px(idn.eye_y), "tip": self._px(idn.nose_tip_y),
            "w": self._px(idn.nose_half_width), "base": self._px(idn.nose_tip_y + 0.028),
        }

    def landmarks(self, closure: float = 0.0) -> np.ndarray:
        """The 68 dlib-convention landmarks of the neutral face, (68, 2) float64 image pixels.

        Args:
            closure: eyelid closure in [0, 1] (blinks lower the upper-lid points 37, 38, 43, 44).
        """
        idn = self.identity
        points = np.zeros((68, 2), dtype=np.float64)
        # jaw 0-16 along the outline, from the subject's right (image left) around the chin
        cx, cy = self._px(idn.center[0]), self._px(idn.center[1])
        b = self._px(idn.half_height)
        n = idn.exponent
        top = self._px(idn.eye_y) + 0.35 * self._px(idn.nose_tip_y - idn.eye_y)
        phi0 = np.arcsin(np.clip((top - cy) / b, 0.0, 1.0) ** (n / 2.0))
        phis = np.linspace(np.pi - phi0, phi0, 17)
        dys = b * np.abs(np.sin(phis)) ** (2.0 / n)
        dxs = self._outline_half_width(dys) * np.sign(np.cos(phis)) * np.abs(np.cos(phis)) ** (2.0 / n)
        points[0:17] = np.stack([cx + dxs, cy + dys], axis=1)
        # brows 17-21 (subject's right, outer -> inner), 22-26 (subject's left, inner -> outer)
        ts = np.array([1.0, 0.75, 0.5, 0.25, 0.0])
        bx, by, _ = self._brow_curve("R", ts)
        points[17:22] = np.stack([bx, by], axis=1)
        bx, by, _ = self._brow_curve("L", ts[::-1])
        points[22:27] = np.stack([bx, by], axis=1)
        # nose 27-30 bridge (root -> tip), 31-35 base (image left -> right)
        nose = self._nose()
        bridge = np.linspace(nose["root"], nose["tip"], 4)
        points[27:31] = np.stack([np.full(4, nose["x"]), bridge], axis=1)
        base_dx = np.array([-0.8, -0.4, 0.0, 0.4, 0.8]) * nose["w"]
        base_dy = np.array([0.0, 0.25, 0.35, 0.25, 0.0]) * self._px(0.02)
        points[31:36] = np.stack([nose["x"] + base_dx, nose["base"] + base_dy], axis=1)
        # eyes: 36-41 subject's right (outer corner 36 on the image left), 42-47 subject's left
        for start, side in ((36, "R"), (42, "L")):
            e = self._eye(side)
            order = np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])
            xs = e["x"] + order * e["w"]
            _, upper, lower = self._eye_curves(side, xs, closure)
            _, upper_open, _ = self._eye_curves(side, xs, 0.0)
            ys = np.array([upper_open[0], upper[1], upper[2], upper_open[3], lower[4], lower[5]])
            points[start:start + 6] = np.stack([xs, ys], axis=1)
        # mouth: outer 48-59, inner 60-67
        mx, mw = self._px(idn.center[0]), self._px(idn.mouth_half_width)
        outer_upper_t = np.array([-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0])
        xs = mx + outer_upper_t * mw
        _, line, upper, _ = self._mouth_curves(xs)
        ys = upper.copy()
        ys[[0, -1]] = line[[0, -1]]
        points[48:55] = np.stack([xs, ys], axis=1)
        outer_lower_t = np.array([2 / 3, 1 / 3, 0.0, -1 / 3, -2 / 3])
        xs = mx + outer_lower_t * mw
        _, _, _, lower = self._mouth_curves(xs)
        points[55:60] = np.stack([xs, lower], axis=1)
        inner_t = np.array([-0.9, -1 / 3, 0.0, 1 / 3, 0.9, 1 / 3, 0.0, -1 / 3])
        xs = mx + inner_t * mw
        _, line, _, _ = self._mouth_curves(xs)
        points[60:68] = np.stack([xs, line], axis=1)
        return points

    # ------------------------------------------------------------------ drawing
    def _draw_base(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idn = self.identity
        s = self.scale
        xs, ys = self._grid()
        shape = xs.shape
        cx, cy = self._px(idn.center[0]), self._px(idn.center[1])
        a, b = self._px(idn.half_width), self._px(idn.half_height)
        # textures: all drawn here, in a fixed order, from the subject's generator
        tex_low = _smooth_noise(rng, shape, 6.0 * s)
        tex_mid = _smooth_noise(rng, shape, 1.8 * s)
        tex_pore = _smooth_noise(rng, shape, max(0.7 * s, 0.6))
        tex_hair = _smooth_noise(rng, shape, max(0.5 * s, 0.5), 3.0 * s)
        tex_brow = _smooth_noise(rng, shape, 1.5 * s, max(0.4 * s, 0.4))
        tex_lip = _smooth_noise(rng, shape, max(0.4 * s, 0.4), 1.2 * s)
        tex_eye = _smooth_noise(rng, shape, max(0.6 * s, 0.5))
        freckle_xy = np.stack([rng.uniform(cx - a, cx + a, idn.freckles), rng.uniform(cy - 0.8 * b, cy + b, idn.freckles)], axis=1)
        freckle_weight = rng.uniform(0.3, 1.0, idn.freckles)
        hair_edge = _smooth_noise(rng, (1, shape[1]), 4.0 * s)[0]

        # background with a vertical gradient
        image = np.empty(shape + (3,), dtype=np.float32)
        image[:] = np.asarray(idn.background, dtype=np.float32)
        _shade(image, 1.0 - 0.12 * (ys / self.size) + 0.02 * tex_low)
        # neck below the face, in shadow
        neck = _coverage(np.abs(xs - cx) - 0.62 * a, 1.5 * s) * _coverage(cy - ys, 2.0 * s)
        _blend(image, np.asarray(idn.skin) * 0.62, neck)
        # hair behind the head
        head = _coverage((((xs - cx) / (1.07 * a)) ** 2 + ((ys - cy + 0.04 * b) / (1.12 * b)) ** 2 - 1.0) * a, 1.5 * s)
        hair_colour = np.asarray(idn.hair, dtype=np.float32)[None, None, :] * (1.0 + 0.25 * tex_hair[..., None])
        _blend(image, hair_colour, head * _coverage(ys - cy, 4.0 * s))

        # skin inside the outline, below the hairline
        outline = self._outline_value(xs, ys)
        face_mask = _coverage((outline - 1.0) * min(a, b), 1.2 * s)
        hairline = self._px(idn.hairline) + self._px(idn.hairline_curve) * ((xs - cx) / a) ** 2 * 4.0 + 1.2 * s * hair_edge[None, :]
        skin_mask = face_mask * _coverage(hairline - ys, 1.5 * s)
        rx, ry = (xs - cx) / (1.05 * a), (ys - cy) / (1.05 * b)
        nz = np.sqrt(np.clip(1.0 - rx * rx - ry * ry, 0.0, 1.0))
        light_x, light_y = idn.light
        shading = (0.72 + 0.28 * np.sqrt(nz)) * (1.0 - 0.07 * (light_x * rx + light_y * ry))
        texture = 1.0 + 0.025 * tex_low + 0.02 * tex_mid + 0.045 * tex_pore
        skin = np.asarray(idn.skin, dtype=np.float32)[None, None, :] * (shading * texture)[..., None]
        # cheeks blush
        for side in ("R", "L"):
            e = self._eye(side)
            cheek = np.exp(-(((xs - e["x"] - 0.2 * e["o"] * e["w"]) / (0.07 * self.size)) ** 2 + ((ys - e["y"] - 0.12 * self.size) / (0.06 * self.size)) ** 2))
            skin[..., 0] *= 1.0 + idn.blush * cheek
            skin[..., 1] *= 1.0 - 0.6 * idn.blush * cheek
            skin[..., 2] *= 1.0 - 0.5 * idn.blush * cheek
        # freckles / moles: Gaussian dots splatted on the skin
        spots = np.zeros(shape, dtype=np.float32)
        for (fx, fy), weight in zip(freckle_xy, freckle_weight):
            col, row = fx + self.pad, fy + self.pad
            c0, r0 = int(np.floor(col)), int(np.floor(row))
            if 0 <= c0 < shape[1] - 1 and 0 <= r0 < shape[0] - 1:
                wc, wr = col - c0, row - r0
                spots[r0, c0] += weight * (1 - wc) * (1 - wr)
                spots[r0, c0 + 1] += weight * wc * (1 - wr)
                spots[r0 + 1, c0] += weight * (1 - wc) * wr
                spots[r0 + 1, c0 + 1] += weight * wc * wr
        spot_sigma = max(0.8 * s, 0.6)
        spots = cv2.GaussianBlur(spots, (0, 0), spot_sigma) * (2 * np.pi * spot_sigma ** 2)
        skin *= (1.0 - 0.25 * np.clip(spots, 0, 1))[..., None]
        skin *= np.array([1.0, 1.0, 1.0], dtype=np.float32) - 0.08 * np.clip(spots, 0, 1)[..., None] * np.array([0.0, 0.5, 1.0], dtype=np.float32)
        image += skin_mask[..., None] * (skin - image)

        # eye sockets and lid creases
        for side in ("R", "L"):
            e = self._eye(side)
            socket = np.exp(-(((xs - e["x"]) / (1.5 * e["w"])) ** 2 + ((ys - e["y"] + 0.3 * e["up"]) / (2.2 * e["up"] + 1.0 * s)) ** 2))
            _shade(image, 1.0 - 0.10 * socket * skin_mask)
            t, upper, _ = self._eye_curves(side, xs)
            crease_y = upper - 0.9 * e["up"] - 0.6 * s
            crease = np.exp(-(((ys - crease_y) / (0.9 * s)) ** 2)) * _coverage(np.abs(t) - 1.05, 0.15)
            _shade(image, 1.0 - 0.12 * crease)
            under_t = np.clip(t, -1, 1)
            under_y = e["y"] + e["low"] * _lid_shape(under_t) + 2.2 * s
            under = np.exp(-(((ys - under_y) / (1.2 * s)) ** 2)) * _coverage(np.abs(t) - 0.9, 0.2)
            _shade(image, 1.0 - 0.06 * under)

        # nose: bridge side shadows, tip highlight, alae and nostrils
        nose = self._nose()
        for o in (-1.0, 1.0):
            side_line = np.array([
                [nose["x"] + o * 0.35 * nose["w"], nose["root"] + 0.15 * (nose["tip"] - nose["root"])],
                [nose["x"] + o * 0.45 * nose["w"], nose["tip"] - 0.25 * (nose["tip"] - nose["root"])],
                [nose["x"] + o * 0.85 * nose["w"], nose["tip"] - 0.02 * self.size],
            ])
            d = _polyline_distance(xs, ys, side_line)
            shade = 0.09 * (0.5 - 0.4 * o * idn.light[0])
            _shade(image, 1.0 - shade * np.exp(-((d / (1.6 * s)) ** 2)))
            ala = np.array([
                [nose["x"] + o * 0.55 * nose["w"], nose["tip"] - 0.012 * self.size],
                [nose["x"] + o * 1.0 * nose["w"], nose["tip"] + 0.004 * self.size],
                [nose["x"] + o * 0.95 * nose["w"], nose["base"] - 0.004 * self.size],
                [nose["x"] + o * 0.75 * nose["w"], nose["base"]],
            ])
            d = _polyline_distance(xs, ys, ala)
            _shade(image, 1.0 - 0.18 * np.exp(-((d / (0.8 * s)) ** 2)))
            nostril = (((xs - nose["x"] - o * 0.45 * nose["w"]) / (0.32 * nose["w"])) ** 2
                       + ((ys - nose["base"] + 0.006 * self.size) / (0.009 * self.size)) ** 2)
            _blend(image, np.asarray(idn.skin) * 0.28, _coverage((np.sqrt(nostril) - 1.0) * 0.009 * self.size, 1.0 * s))
            # nasolabial fold from the ala to beyond the lip corner
            mouth_x = nose["x"] + o * self._px(idn.mouth_half_width)
            fold = np.array([
                [nose["x"] + o * 1.1 * nose["w"], nose["tip"]],
                [nose["x"] + o * 1.45 * nose["w"], 0.5 * (nose["base"] + self._px(idn.mouth_y))],
                [mouth_x + o * 0.028 * self.size, self._px(idn.mouth_y) + 0.03 * self.size],
            ])
            d = _polyline_distance(xs, ys, fold)
            _shade(image, 1.0 - 0.08 * np.exp(-((d / (1.4 * s)) ** 2)))
        tip = np.exp(-(((xs - nose["x"]) / (0.5 * nose["w"])) ** 2 + ((ys - nose["tip"]) / (0.4 * nose["w"])) ** 2))
        image += (0.07 * tip)[..., None]
        philtrum = np.exp(-((xs - nose["x"]) / (1.2 * s)) ** 2) * (ys > nose["base"]) * (ys < self._px(idn.mouth_y) - self._px(idn.lip_upper))
        _shade(image, 1.0 - 0.05 * philtrum)

        # brows
        for side in ("R", "L"):
            t_line = np.linspace(0.0, 1.0, 24)
            bx, by, _ = self._brow_curve(side, t_line)
            x_inner, x_outer = bx[0], bx[-1]
            t = np.clip((xs - x_inner) / (x_outer - x_inner), 0.0, 1.0)
            _, yc, thick = self._brow_curve(side, t)
            span = (xs - x_inner) / (x_outer - x_inner)
            ends = _coverage(-span * np.abs(x_outer - x_inner), 2.5 * s) * _coverage((span - 1.0) * np.abs(x_outer - x_inner), 1.0 * s)
            alpha = _coverage(np.abs(ys - yc) - 0.5 * thick, 1.2 * s) * ends * (0.78 + 0.12 * np.clip(tex_brow, -2, 2))
            brow_colour = np.asarray(idn.hair, dtype=np.float32) * 0.9 + 0.08
            _blend(image, brow_colour, np.clip(alpha, 0, 1))

        # mouth: lips, lip line, chin crease
        t, line, upper, lower = self._mouth_curves(xs)
        inside_x = np.abs(t) <= 1.0
        lip_colour = np.asarray(idn.lip, dtype=np.float32)[None, None, :] * (1.0 + 0.06 * tex_lip + 0.03 * tex_pore)[..., None]
        upper_alpha = _coverage(upper - ys, 1.0 * s) * _coverage(ys - line, 1.0 * s) * inside_x
        lower_alpha = _coverage(ys - lower, 1.0 * s) * _coverage(line - ys, 1.0 * s) * inside_x
        _blend(image, lip_colour * 0.92, upper_alpha)
        _blend(image, lip_colour, lower_alpha)
        lower_mid = np.exp(-(((ys - 0.5 * (line + lower)) / (0.35 * self._px(idn.lip_lower))) ** 2)) * lower_alpha
        image += (0.05 * lower_mid)[..., None]
        lip_line = np.exp(-(((ys - line) / (0.7 * s)) ** 2)) * _coverage((np.abs(t) - 1.04) * self._px(idn.mouth_half_width), 1.0 * s)
        _blend(image, np.asarray(idn.lip) * 0.25, 0.85 * lip_line)
        chin_y = lower + 0.035 * self.size
        chin_crease = np.exp(-(((ys - chin_y) / (1.6 * s)) ** 2)) * np.exp(-(t / 0.6) ** 2)
        _shade(image, 1.0 - 0.07 * chin_crease)
        return np.clip(image, 0.0, 1.0).astype(np.float32), tex_eye

    def render(self, closure: float = 0.0) -> np.ndarray:
        """The neutral face with eyelids closed by ``closure`` in [0, 1].

        Returns:
            (size + 2 pad, size + 2 pad, 3) float32 RGB in [0, 1].
        """
        image = self.base.copy()
        idn = self.identity
        s = self.scale
        for side in ("R", "L"):
            e = self._eye(side)
            # work inside the eye's bounding box only
            x0, x1 = int(np.floor(e["x"] - e["w"] - 3 * s)) + self.pad, int(np.ceil(e["x"] + e["w"] + 3 * s)) + self.pad + 1
            y0 = int(np.floor(e["y"] - e["up"] - abs(e["tilt"]) - 4 * s)) + self.pad
            y1 = int(np.ceil(e["y"] + e["low"] + abs(e["tilt"]) + 4 * s)) + self.pad + 1
            patch = image[y0:y1, x0:x1]
            ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            xs -= self.pad
            ys -= self.pad
            texture = self._eye_texture[y0:y1, x0:x1]
            t, upper, lower = self._eye_curves(side, xs, closure)
            _, upper_open, _ = self._eye_curves(side, xs, 0.0)
            inside_x = _coverage((np.abs(t) - 1.0) * e["w"], 0.8 * s)
            opening = _coverage(upper - ys, 0.9 * s) * _coverage(ys - lower, 0.9 * s) * inside_x
            # closed part of the lid: skin, a little darker
            lid = _coverage(upper_open - ys, 0.9 * s) * _coverage(ys - upper, 0.9 * s) * inside_x
            _shade(patch, 1.0 - 0.08 * lid)
            eye = np.empty(xs.shape + (3,), dtype=np.float32)
            eye[:] = np.array([0.90, 0.87, 0.84], dtype=np.float32)
            corner = np.exp(-(((xs - e["x"] + e["o"] * 0.95 * e["w"]) / (0.18 * e["w"])) ** 2))
            _blend(eye, (0.80, 0.55, 0.52), 0.6 * corner)
            _shade(eye, (1.0 - 0.18 * np.abs(np.clip(t, -1, 1)) ** 2) * (1.0 + 0.03 * texture))
            ix = e["x"] + self._px(idn.gaze[0])
            iy = e["y"] + self._px(idn.gaze[1])
            radius = np.hypot(xs - ix, ys - iy)
            iris_r = self._px(idn.iris_radius)
            iris_colour = np.asarray(idn.iris, dtype=np.float32)[None, None, :] * (1.0 + 0.25 * texture[..., None] + 0.3 * (radius / iris_r)[..., None])
            _blend(eye, iris_colour, _coverage(radius - iris_r, 0.9 * s))
            _blend(eye, (0.03, 0.03, 0.03), _coverage(radius - 0.42 * iris_r, 0.8 * s))
            glint = np.exp(-((np.hypot(xs - ix - 0.35 * iris_r, ys - iy + 0.35 * iris_r) / (0.7 * s)) ** 2))
            _blend(eye, (1.0, 1.0, 1.0), 0.8 * glint)
            # shadow of the upper lid on the eyeball
            _shade(eye, 1.0 - 0.25 * np.exp(-np.clip(ys - upper, 0, None) / (1.2 * s)))
            _blend(patch, eye, opening)
            # lash line on the (moving) upper lid, faint lower lid line
            lash_width = (0.8 + 0.6 * np.clip(e["o"] * t, 0, 1)) * s
            lash = np.exp(-(((ys - upper + 0.3 * s) / lash_width) ** 2)) * inside_x
            _blend(patch, np.asarray(idn.hair) * 0.5, 0.9 * lash)
            lower_line = np.exp(-(((ys - lower - 0.2 * s) / (0.6 * s)) ** 2)) * inside_x
            _shade(patch, 1.0 - 0.15 * lower_line)
        return np.clip(image, 0.0, 1.0)

    def _draw_depth(self) -> np.ndarray:
        """Plausible relative depth: head ellipsoid + nose ridge + lips - eye sockets, in [0, 1]."""
        idn = self.identity
        xs, ys = self._grid()
        cx, cy = self._px(idn.center[0]), self._px(idn.center[1])
        a, b = self._px(idn.half_width), self._px(idn.half_height)
        head = _coverage((((xs - cx) / (1.07 * a)) ** 2 + ((ys - cy + 0.04 * b) / (1.12 * b)) ** 2 - 1.0) * a, 1.0)
        face = _coverage((self._outline_value(xs, ys) - 1.0) * min(a, b), 1.0)
        mask = np.maximum(face, head * _coverage(ys - cy + 0.1 * b, 0.2 * b))
        ellipsoid = np.sqrt(np.clip(1.0 - ((xs - cx) / (1.1 * a)) ** 2 - ((ys - cy) / (1.15 * b)) ** 2, 0.0, 1.0))
        nose = self._nose()
        length = nose["tip"] - nose["root"]
        ridge = np.exp(-0.5 * (((xs - nose["x"]) / (0.7 * nose["w"])) ** 2)) * np.clip((ys - nose["root"] + 0.1 * length) / (1.1 * length), 0, 1) ** 1.5
        ridge *= _coverage(ys - nose["base"], 0.03 * self.size)
        tip = np.exp(-0.5 * (((xs - nose["x"]) / (1.0 * nose["w"])) ** 2 + ((ys - nose["tip"]) / (0.6 * nose["w"])) ** 2))
        sockets = sum(
            np.exp(-0.5 * (((xs - e["x"]) / (1.1 * e["w"])) ** 2 + ((ys - e["y"]) / (2.0 * e["up"])) ** 2))
            for e in (self._eye("R"), self._eye("L"))
        )
        mouth = np.exp(-0.5 * (((xs - cx) / self._px(idn.mouth_half_width)) ** 2 + ((ys - self._px(idn.mouth_y)) / self._px(0.03)) ** 2))
        depth = 0.25 + 0.5 * ellipsoid + 0.13 * ridge + 0.08 * tip - 0.07 * sockets + 0.03 * mouth
        return (mask * np.clip(depth, 0.0, 1.0)).astype(np.float32)
