"""Frontal chest anatomy: parameters (per patient and per study) and attenuation layers.

Units: positions and lengths are normalised to the image width (see ``geometry``); attenuation
("mu") is in units of a full chest thickness of soft tissue, so aerated lung is about 0.25,
the mediastinum and abdomen about 1, and a rib adds about 0.1. The image is a PA/AP projection
displayed as if facing the patient: the patient's right lung is on the image left.

Sides are named by the patient's side: ``RIGHT`` (sigma -1, image left) and ``LEFT`` (sigma +1).
Small in-plane rotation is rendered as a tilt: analytic shapes shift per row and per side, drawn
bones are rotated exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from models.phantoms.geometry import F32, F64, Box, Grid, box, soft_step, upsample

RIGHT: Final = "right"
LEFT: Final = "left"
SIDES: Final = (RIGHT, LEFT)
SIGMA: Final = {RIGHT: -1.0, LEFT: 1.0}


@dataclass(frozen=True)
class Body:
    """A patient's build: fixed across the patient's studies."""

    sex: str
    thorax_half: float
    lung_top: float
    lung_height: float
    mediastinum: float
    heart_ctr: float
    heart_angle: float
    heart_aspect: float
    dome_right: float
    dome_left: float
    tissue: float
    air: float
    fat: float
    breast: float
    rib_spacing: float
    rib_curve: float
    hilum_y: float
    knob: float
    bubble: float
    vessel_seed: int


@dataclass(frozen=True)
class Anatomy:
    """The anatomy of one frontal image: the patient's body placed and posed for this study."""

    body: Body
    view: str
    cx: float
    tilt: float
    lung_top: float
    cp_right: float
    cp_left: float
    dome_right: float
    dome_left: float
    thorax_half: float
    medial: float
    heart_ctr: float
    heart_shift: float
    clavicle_y: float
    scapula_in: float
    rib_jitter: float
    exposure_tissue: float


@dataclass(frozen=True)
class HeartShape:
    """Cardiac silhouette: a rotated left-ventricular ellipse plus a right-atrial arc.

    ``left`` and ``right`` are its widest image extents (the atrium gives the left one).
    """

    cx: float
    cy: float
    a: float
    b: float
    angle: float
    ra_x: float
    ra_y: float
    ra_r: float
    left: float
    right: float

    @property
    def half_height(self) -> float:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return math.sqrt((self.a * s) ** 2 + (self.b * c) ** 2)


def sample_body(rng: np.random.Generator, sex: str) -> Body:
    """Draw a patient's build."""
    u = rng.uniform
    female = sex == "F"
    return Body(
        sex=sex,
        thorax_half=u(0.365, 0.41) - (0.01 if female else 0.0),
        lung_top=u(0.105, 0.14),
        lung_height=u(0.56, 0.64),
        mediastinum=u(0.045, 0.06),
        heart_ctr=u(0.40, 0.465),
        heart_angle=u(0.55, 0.8),
        heart_aspect=u(0.66, 0.8),
        dome_right=u(0.06, 0.085),
        dome_left=u(0.045, 0.07),
        tissue=u(0.9, 1.12),
        air=u(0.74, 0.82),
        fat=u(0.035, 0.075),
        breast=u(0.4, 1.0) if female else 0.0,
        rib_spacing=u(0.95, 1.06),
        rib_curve=u(0.8, 1.2),
        hilum_y=u(0.40, 0.44),
        knob=u(0.022, 0.032),
        bubble=u(0.6, 1.2) if rng.random() < 0.75 else 0.0,
        vessel_seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_anatomy(body: Body, view: str, rng: np.random.Generator) -> Anatomy:
    """Place and pose a patient for one frontal image (AP: magnified heart, shallower breath)."""
    u = rng.uniform
    ap = view == "AP"
    inspiration = u(0.93, 1.05) - (0.05 if ap else 0.0)
    height = body.lung_height * inspiration
    top = body.lung_top + u(-0.012, 0.012) + (0.015 if ap else 0.0)
    cp_right = top + height
    magnification = 1.045 if ap else 1.0
    return Anatomy(
        body=body,
        view=view,
        cx=0.5 + u(-0.02, 0.02),
        tilt=float(np.clip(rng.normal(0.0, 0.012), -0.035, 0.035)),
        lung_top=top,
        cp_right=cp_right,
        cp_left=cp_right + u(0.0, 0.02),
        dome_right=body.dome_right * u(0.85, 1.15) * (1.1 if ap else 1.0),
        dome_left=body.dome_left * u(0.85, 1.15) * (1.1 if ap else 1.0),
        thorax_half=body.thorax_half * u(0.98, 1.02),
        medial=body.mediastinum,
        heart_ctr=min(body.heart_ctr * magnification * u(0.98, 1.02), 0.495),
        heart_shift=u(-0.01, 0.01),
        clavicle_y=top + (0.06 if ap else 0.1) + u(-0.01, 0.01),
        scapula_in=1.0 if ap else u(0.0, 0.25),
        rib_jitter=u(-0.3, 0.3),
        exposure_tissue=body.tissue,
    )


def dome_top(anat: Anatomy, side: str) -> float:
    """The highest point (smallest y) of a hemidiaphragm."""
    cp = anat.cp_right if side == RIGHT else anat.cp_left
    return cp - (anat.dome_right if side == RIGHT else anat.dome_left)


def normal_heart(
    anat: Anatomy, ctr: float | None = None, roundness: float = 0.0, drop: float = 0.0
) -> HeartShape:
    """The heart whose widest extent gives cardiothoracic ratio ``ctr`` (default: this normal one).

    About a third of the width lies right of the midline (image left), two thirds left of it.
    """
    ratio = anat.heart_ctr if ctr is None else ctr
    width = ratio * 2.0 * anat.thorax_half
    left = anat.cx + anat.heart_shift - 0.32 * width
    right = left + width
    half = (right - (anat.cx - 0.07)) / 2.0
    angle = anat.body.heart_angle
    aspect = min(anat.body.heart_aspect * (1.0 + roundness), 0.95)
    c, s = math.cos(angle), math.sin(angle)
    a = half / math.sqrt(c * c + (aspect * s) ** 2)
    b = aspect * a
    widest_offset = (a * a - b * b) * s * c / half
    radius = 0.2 * width + 0.012
    return HeartShape(
        cx=right - half,
        cy=dome_top(anat, LEFT) - widest_offset - 0.012 + drop,
        a=a,
        b=b,
        angle=angle,
        ra_x=left + radius,
        ra_y=dome_top(anat, RIGHT) - 0.3 * radius,
        ra_r=radius,
        left=left,
        right=right,
    )


def measured_ctr(anat: Anatomy, heart: HeartShape) -> float:
    """Cardiothoracic ratio of a heart shape in this anatomy (maximal widths)."""
    return (heart.right - heart.left) / (2.0 * anat.thorax_half)


# ---------------------------------------------------------------------------------- lungs


@dataclass(frozen=True)
class LungField:
    """One lung in its bounding box: coordinates, dome and the aerated-thickness profile."""

    side: str
    window: Box
    s: F32  # 0 at the medial edge, 1 at the lateral chest wall (bbox-sized)
    t: F32  # 0 at the apex, 1 at the costophrenic angle (column vector, bbox rows)
    width: F32  # lateral minus medial distance per row (column vector)
    above_dome: F32  # dome y minus pixel y (bbox-sized, > 0 above the diaphragm)
    air: F32  # aerated thickness 0..1 (bbox-sized), before the heart and mediastinum
    top: float  # apex y (after tilt)
    cp: float  # costophrenic angle y (after tilt)
    dome_y: F32  # the hemidiaphragm's y per column of the window

    @property
    def sigma(self) -> float:
        return SIGMA[self.side]


def _lateral_fraction(t: F32) -> F32:
    tt = np.clip(t / 0.42, 0.0, 1.0)
    out: F32 = (0.36 + 0.64 * np.sqrt(np.clip(1.0 - (1.0 - tt) ** 2, 0.0, 1.0))) * (
        0.965 + 0.035 * np.clip(t, 0.0, 1.2)
    )
    return out.astype(np.float32)


def _medial_fraction(t: F32) -> F32:
    tt = np.clip(t / 0.2, 0.0, 1.0)
    out: F32 = 0.36 * (1.0 - np.sqrt(np.clip(1.0 - (1.0 - tt) ** 2, 0.0, 1.0)))
    return out.astype(np.float32)


def dome_profile(sb: F32) -> F32:
    """Dome height fraction across a hemidiaphragm (0 medial and at the costophrenic angle)."""
    c = np.clip(sb, 0.0, 1.0)
    out: F32 = np.clip(np.sin(np.float32(math.pi) * c**0.8), 0.0, 1.0) ** 0.6
    return out.astype(np.float32)


def lung_field(grid: Grid, anat: Anatomy, side: str) -> LungField:
    """Geometry and aerated-thickness profile of one lung (plus its recess below the dome)."""
    sigma = SIGMA[side]
    cp = anat.cp_right if side == RIGHT else anat.cp_left
    dome_h = anat.dome_right if side == RIGHT else anat.dome_left
    m, w_half = anat.medial, anat.thorax_half
    # Rotation: the apex and angle of the lung on the side rotated upwards move up.
    shift = -anat.tilt * sigma * 0.2
    top = anat.lung_top + shift
    cp = cp + shift
    recess = 0.04
    x_lo = anat.cx + (-w_half - 0.03 if sigma < 0 else m - 0.01)
    x_hi = anat.cx + (-m + 0.01 if sigma < 0 else w_half + 0.03)
    win = box(grid, x_lo, x_hi, top, cp + recess)
    ys = grid.y[win.rows]
    xs = grid.x[win.cols]
    t = ((ys - top) / (cp - top)).astype(np.float32)[:, None]
    lat = m + (w_half - m) * _lateral_fraction(t)
    med = m + (w_half - m) * _medial_fraction(t)
    width = np.maximum(lat - med, 1e-4).astype(np.float32)
    centre = (anat.cx + anat.tilt * (ys - 0.5)).astype(np.float32)[:, None]
    s: F32 = ((sigma * (xs[None, :] - centre) - med) / width).astype(np.float32)
    s[np.broadcast_to(t < 0.0, s.shape)] = -1.0
    # Dome: a per-column curve, tilted with the rotation.
    sb = ((sigma * (xs - anat.cx) - m) / (w_half - m)).astype(np.float32)
    dome_y = cp - dome_h * dome_profile(sb) - anat.tilt * (xs - 0.5)
    above = (dome_y[None, :] - ys[:, None]).astype(np.float32)
    q = np.subtract(np.float32(1.0), s)
    q *= s
    q *= np.float32(4.0)
    np.clip(q, 0.0, 1.0, out=q)
    np.subtract(np.float32(1.0), q, out=q)
    air = q * q
    air *= q
    np.subtract(np.float32(1.0), air, out=air)
    vertical = 0.62 + 0.38 * np.clip(t / 0.35, 0.0, 1.0)
    air *= vertical.astype(np.float32)
    # the domes: air thins towards each dome, then a little recess air behind it
    band = int(np.searchsorted(ys, float(dome_y.min()) - 0.065))
    near = above[band:]
    dome = np.where(
        near >= 0.0,
        0.72 + 0.28 * np.sqrt(np.clip(near / 0.06, 0.0, 1.0)),
        0.2 * np.clip(1.0 + near / 0.035, 0.0, 1.0),
    )
    air[band:] *= dome.astype(np.float32)
    return LungField(
        side=side,
        window=win,
        s=s,
        t=t,
        width=width,
        above_dome=above,
        air=air,
        top=top,
        cp=cp,
        dome_y=dome_y.astype(np.float32),
    )


# ---------------------------------------------------------------------------------- soft tissue


def body_tissue(grid: Grid, anat: Anatomy) -> F32:
    """Soft-tissue attenuation of neck, shoulders, chest wall and abdomen (a cylinder per row)."""
    y = grid.y.astype(np.float64)
    b = anat.body
    chest_half = anat.thorax_half + 0.035 + b.fat
    neck_half = 0.085 + 0.5 * b.fat
    rise = np.clip((y - (anat.lung_top - 0.085)) / 0.07, 0.0, 1.0)
    rise = rise * rise * (3.0 - 2.0 * rise)
    shoulders = np.maximum(chest_half, 0.6 - 1.1 * np.clip(y - (anat.lung_top + 0.02), 0.0, 1.0))
    half = neck_half + (shoulders - neck_half) * rise
    half = half + 0.03 * np.clip((y - anat.cp_right) / 0.2, 0.0, 1.0)
    thick_row = anat.exposure_tissue * (
        1.0
        + 0.28 * np.clip((y - anat.cp_right + 0.04) / 0.16, 0.0, 1.0)
        + 0.12 * np.clip(1.0 - np.abs(y - anat.lung_top) / 0.1, 0.0, 1.0)
    )
    centre = (anat.cx + anat.tilt * (y - 0.5)).astype(np.float32)
    q = np.subtract(grid.x[None, :], centre[:, None])
    q *= (1.0 / half).astype(np.float32)[:, None]
    np.square(q, out=q)
    np.subtract(np.float32(1.0), q, out=q)
    np.maximum(q, 0.0, out=q)
    np.sqrt(q, out=q)
    np.sqrt(q, out=q)
    q *= thick_row.astype(np.float32)[:, None]
    return q


def compact_bump(grid: Grid, cx: float, cy: float, rx: float, ry: float) -> tuple[Box, F32]:
    """A smooth bump (1 - r^2)^2 that is exactly zero outside the ellipse (rx, ry)."""
    win = box(grid, cx - rx, cx + rx, cy - ry, cy + ry)
    dx = (grid.x[win.cols] - cx) / rx
    dy = (grid.y[win.rows] - cy) / ry
    r2 = dy[:, None] ** 2 + dx[None, :] ** 2
    v = np.clip(1.0 - r2, 0.0, 1.0)
    return win, (v * v).astype(np.float32)


def heart_occupancy(grid: Grid, heart: HeartShape) -> tuple[Box, F32]:
    """How much of the beam path the heart fills (0..0.85), with a sharp silhouette edge."""
    hh = heart.half_height
    top = min(heart.cy - hh, heart.ra_y - heart.ra_r)
    bottom = max(heart.cy + hh, heart.ra_y + heart.ra_r)
    win = box(grid, heart.left, heart.right, top, bottom)
    dx = (grid.x[win.cols] - heart.cx)[None, :]
    dy = (grid.y[win.rows] - heart.cy)[:, None]
    c, s = math.cos(heart.angle), math.sin(heart.angle)
    u = (dx * c + dy * s) / heart.a
    v = (dy * c - dx * s) / heart.b
    r2 = u * u + v * v
    rx = (grid.x[win.cols] - heart.ra_x)[None, :] / heart.ra_r
    ry = (grid.y[win.rows] - heart.ra_y)[:, None] / heart.ra_r
    np.minimum(r2, rx * rx + ry * ry, out=r2)
    occ = 0.8 * np.sqrt(np.clip((1.0 - r2) * 4.0, 0.0, 1.0))
    return win, occ.astype(np.float32)


def mediastinum_occupancy(grid: Grid, anat: Anatomy, heart: HeartShape) -> tuple[Box, F32]:
    """Upper mediastinum with its contours: SVC on the right; aortic knob, aortopulmonary window
    and pulmonary trunk on the left."""
    b = anat.body
    y_end = max(heart.cy, heart.ra_y)
    win = box(grid, anat.cx - 0.1, anat.cx + 0.13, 0.0, y_end)
    ys = grid.y[win.rows].astype(np.float64)
    widen = np.clip((ys - anat.lung_top - 0.1) / 0.3, 0.0, 1.0)
    knob_y = anat.lung_top + 0.19
    left = anat.medial * (0.8 + 0.45 * widen)
    left = left + b.knob * np.exp(-(((ys - knob_y) / 0.028) ** 2))
    left = left + 0.6 * b.knob * np.exp(-(((ys - knob_y - 0.065) / 0.024) ** 2))
    right = anat.medial * (0.8 + 0.3 * widen)
    # the SVC border runs down into the right atrial border
    to_atrium = np.clip((ys - (heart.ra_y - 2.0 * heart.ra_r)) / heart.ra_r, 0.0, 1.0)
    right = right + to_atrium * np.maximum(anat.cx - heart.left - heart.ra_r * 0.6 - right, 0.0)
    fade = np.clip((y_end - ys) / 0.04, 0.0, 1.0) / 0.006
    centre = anat.cx + anat.tilt * (ys - 0.5)
    dx = np.subtract(grid.x[win.cols][None, :], centre.astype(np.float32)[:, None])
    occ = soft_step(np.subtract(left.astype(np.float32)[:, None], dx), 0.006)
    dx += right.astype(np.float32)[:, None]
    occ *= soft_step(dx, 0.006, out=dx)
    occ *= (fade * 0.006).astype(np.float32)[:, None]
    return win, occ


def hila(grid: Grid, anat: Anatomy) -> list[tuple[Box, F32]]:
    """Hilar vessel densities (the left hilum sits a little higher)."""
    out = []
    for side in SIDES:
        sigma = SIGMA[side]
        hx = anat.cx + sigma * (anat.medial + 0.045)
        hy = (
            anat.body.hilum_y
            + (anat.lung_top - anat.body.lung_top)
            - (0.015 if side == LEFT else 0)
        )
        win, bump = compact_bump(grid, hx, hy, 0.055, 0.08)
        out.append((win, bump * np.float32(0.14)))
    return out


def breasts(grid: Grid, anat: Anatomy) -> list[tuple[Box, F32]]:
    """Breast shadows over the lower zones, densest at their sharp inferior edge."""
    size = anat.body.breast
    if size <= 0.0:
        return []
    out = []
    for side in SIDES:
        sigma = SIGMA[side]
        cx = anat.cx + sigma * anat.thorax_half * 0.62
        cy = anat.cp_right - 0.11
        rx, ry = 0.17 + 0.05 * size, 0.12 + 0.04 * size
        win = box(grid, cx - rx, cx + rx, cy - ry, cy + ry)
        dx = (grid.x[win.cols] - cx) / rx
        dy = (grid.y[win.rows] - cy) / ry
        r2 = dy[:, None] ** 2 + dx[None, :] ** 2
        lower = np.clip(0.3 + 0.7 * (dy[:, None] + 1.0) / 2.0, 0.0, 1.0)
        val = np.sqrt(np.clip((1.0 - r2) * 4.0, 0.0, 1.0)) * lower * np.float32(0.12 * size)
        out.append((win, val.astype(np.float32)))
    return out


# ---------------------------------------------------------------------------------- drawn layers


class _Canvas:
    """An 8-bit PIL image drawn in normalised coordinates, rotated by the anatomy's tilt.

    Values are attenuations in [0, ``vmax``]; later drawings overwrite earlier ones, so
    structures that should add up (crossing ribs) go on different canvases.
    """

    def __init__(self, grid: Grid, anat: Anatomy, vmax: float) -> None:
        self.size = grid.size
        self.image = Image.new("L", (grid.size, grid.size), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.vmax = vmax
        self.cx = anat.cx
        self.tilt = anat.tilt

    def ink(self, value: float) -> int:
        return min(255, max(0, round(value / self.vmax * 255.0)))

    def points(self, pts: list[tuple[float, float]]) -> list[float]:
        n, k, cx = self.size, self.tilt, self.cx
        out: list[float] = []
        for x, y in pts:
            out.append((x + k * (y - 0.5)) * n)
            out.append((y - k * (x - cx)) * n)
        return out

    def width(self, w: float) -> int:
        return max(1, round(w * self.size))

    def line(self, pts: list[tuple[float, float]], value: float, width: float) -> None:
        self.draw.line(self.points(pts), fill=self.ink(value), width=self.width(width))

    def polygon(self, pts: list[tuple[float, float]], value: float) -> None:
        self.draw.polygon(self.points(pts), fill=self.ink(value))

    def rectangle(self, x0: float, y0: float, x1: float, y1: float, value: float) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], value)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, value: float) -> None:
        x0, y0, x1, y1 = self.points([(cx - rx, cy - ry), (cx + rx, cy + ry)])
        self.draw.ellipse(
            (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=self.ink(value)
        )

    def raw(self) -> npt.NDArray[np.uint8]:
        return np.asarray(self.image)

    def array(self) -> F32:
        out: F32 = self.raw().astype(np.float32)
        out *= np.float32(self.vmax / 255.0)
        return out


def _bone(canvas: _Canvas, pts: list[tuple[float, float]], value: float, width: float) -> None:
    """A tubular bone: a band with slightly denser cortical margins."""
    canvas.line(pts, value, width)
    inner = width - 2.5 / canvas.size * max(1.0, canvas.size / 512)
    if inner * canvas.size >= 2.0:
        canvas.line(pts, value * 0.75, inner)


_BONE_MAX = 0.25


def skeleton(grid: Grid, anat: Anatomy) -> F32:
    """Ribs, clavicles, scapulae, humeral heads and the thoracic spine (attenuation added)."""
    back = _Canvas(grid, anat, _BONE_MAX)  # spine and posterior ribs
    front = _Canvas(grid, anat, _BONE_MAX)  # anterior ribs, clavicles, shoulder girdle
    cx, w = anat.cx, anat.thorax_half
    b = anat.body
    first = anat.lung_top - 0.012
    dome = min(dome_top(anat, RIGHT), dome_top(anat, LEFT))
    spacing = (dome - first) / 9.3 * b.rib_spacing
    for side in SIDES:
        sigma = SIGMA[side]
        for i in range(12):
            y0 = first + spacing * (i + 0.02 * i * i) + 0.003 * anat.rib_jitter * (i % 3)
            thick = 0.015 + 0.0012 * min(i, 7)
            amp = (0.12 + 0.008 * i) * b.rib_curve
            lateral = w + 0.012
            pts = []
            for k in range(6):
                uu = k / 5.0
                x = cx + sigma * (0.03 + uu * (lateral - 0.03))
                pts.append((x, y0 + amp * (-0.3 * uu + 1.0 * uu**2.0)))
            # around the lateral wall and forwards (anterior rib runs down and medially)
            y_end = pts[-1][1]
            turn = (cx + sigma * (lateral + 0.004), y_end + 0.03)
            _bone(back, [*pts, turn], 0.1 if i < 10 else 0.07, thick)
            if i < 8:
                mid = (cx + sigma * (lateral - 0.012), y_end + 0.06)
                inner = (cx + sigma * lateral * 0.62, y_end + 0.105)
                tip = (cx + sigma * lateral * 0.45, y_end + 0.13)
                front.line([turn, mid, inner], 0.045, thick * 0.8)
                front.line([inner, tip], 0.025, thick * 0.75)
        # clavicle: medial end near the spine, S-curve to the acromion
        cy = anat.clavicle_y
        clav = []
        for k in range(6):
            uu = k / 5.0
            x = cx + sigma * (0.04 + uu * 0.27)
            clav.append((x, cy - 0.07 * uu + 0.012 * math.sin(uu * 2.0 * math.pi)))
        _bone(front, clav, 0.22, 0.026)
        # scapula blade: lateral in PA (arms forward), over the lung in AP
        inward = 0.07 * anat.scapula_in
        sx = cx + sigma * (w + 0.04 - inward)
        blade = [
            (sx + sigma * 0.05, anat.lung_top + 0.02),
            (sx - sigma * 0.09, anat.lung_top + 0.06),
            (sx - sigma * 0.015, anat.lung_top + 0.33),
            (sx + sigma * 0.03, anat.lung_top + 0.2),
        ]
        front.polygon(blade, 0.045)
        front.ellipse(cx + sigma * (w + 0.14), anat.lung_top + 0.03, 0.07, 0.075, 0.1)
    total = back.raw().astype(np.float32)
    total += front.raw()
    total *= np.float32(_BONE_MAX / 255.0)
    win, column = spine(grid, anat, spacing * 0.95, first)
    total[win.index] += column
    return total


def spine(grid: Grid, anat: Anatomy, level: float, first: float) -> tuple[Box, F32]:
    """Thoracic vertebrae: bodies with end plates and disc spaces, pedicles, spinous processes."""
    win = box(grid, anat.cx - 0.06, anat.cx + 0.06, 0.0, 1.0)
    ys = grid.y[win.rows].astype(np.float64)
    centre = (anat.cx + anat.tilt * (ys - 0.5)).astype(np.float32)
    dx = np.abs(grid.x[win.cols][None, :] - centre[:, None])
    phase = np.mod((ys - first) / level + 0.5, 1.0)  # 0.5 = mid vertebral body
    body_rows = np.clip((0.4 - np.abs(phase - 0.5)) / 0.04, 0.0, 1.0)
    plate = np.exp(-(((np.abs(phase - 0.5) - 0.36) / 0.04) ** 2))
    body = np.float32(0.07) * np.clip((0.038 - dx) / 0.003, 0.0, 1.0)
    body *= (body_rows + 0.4 * plate).astype(np.float32)[:, None]
    ped_rows = np.clip(1.0 - ((phase - 0.38) / 0.13) ** 2, 0.0, 1.0)
    pedicle = np.clip(1.0 - ((dx - 0.028) / 0.007) ** 2, 0.0, 1.0)
    body += pedicle * (0.05 * ped_rows).astype(np.float32)[:, None]
    spinous_rows = np.clip(1.0 - ((phase - 0.7) / 0.12) ** 2, 0.0, 1.0)
    spinous = np.clip(1.0 - (dx / 0.005) ** 2, 0.0, 1.0)
    body += spinous * (0.04 * spinous_rows).astype(np.float32)[:, None]
    return win, body


def airways(grid: Grid, anat: Anatomy) -> F32:
    """Extra air: trachea, main bronchi and the gastric bubble (subtracted from attenuation)."""
    canvas = _Canvas(grid, anat, 0.25)
    cx = anat.cx
    carina = anat.lung_top + 0.26
    canvas.polygon(
        [(cx - 0.012, 0.0), (cx + 0.012, 0.0), (cx + 0.013, carina), (cx - 0.013, carina)], 0.25
    )
    canvas.line([(cx, carina - 0.005), (cx - 0.055, carina + 0.06)], 0.2, 0.014)
    canvas.line([(cx, carina - 0.005), (cx + 0.06, carina + 0.045)], 0.2, 0.013)
    if anat.body.bubble > 0:
        bx = cx + anat.thorax_half * 0.45
        by = dome_top(anat, LEFT) + 0.045
        canvas.ellipse(bx, by, 0.045 * anat.body.bubble, 0.025 * anat.body.bubble, 0.22)
    return canvas.array()


def _branch_points(
    rng: np.random.Generator, x: F64, y: F64, angle: F64, length: F64
) -> tuple[F64, F64, F64]:
    """Three gently curving sub-segments per branch: (xs, ys) of shape (n, 4), end angles."""
    turns = np.cumsum(rng.normal(0.0, 0.22, size=(x.size, 3)), axis=1) + angle[:, None]
    step = (length / 3.0)[:, None]
    xs = np.concatenate([x[:, None], x[:, None] + np.cumsum(np.cos(turns) * step, axis=1)], axis=1)
    ys = np.concatenate([y[:, None], y[:, None] + np.cumsum(np.sin(turns) * step, axis=1)], axis=1)
    return xs, ys, turns[:, -1]


def vessels(grid: Grid, anat: Anatomy) -> F32:
    """Pulmonary vessel trees branching out of both hila (lung markings), grown level by level."""
    canvas = _Canvas(grid, anat, 0.12)
    rng = np.random.default_rng(anat.body.vessel_seed)
    n_trunks, depth = 9, 3
    for side in SIDES:
        sigma = SIGMA[side]
        hx = anat.cx + sigma * (anat.medial + 0.04)
        hy = (
            anat.body.hilum_y
            + (anat.lung_top - anat.body.lung_top)
            - (0.015 if side == LEFT else 0)
        )
        frac = (np.arange(n_trunks) + rng.uniform(-0.3, 0.3, n_trunks)) / (n_trunks - 1)
        angle = (0.0 if sigma > 0 else math.pi) + sigma * (-1.3 + 2.6 * frac)
        downward = np.maximum(0.0, np.sin(angle))
        length = rng.uniform(0.055, 0.085, n_trunks) * (1.0 + 0.3 * downward)
        width = (0.007 + 0.004 * downward) * rng.uniform(0.8, 1.1, n_trunks)
        value = 0.07 + 0.03 * downward
        x = np.full(n_trunks, hx)
        y = np.full(n_trunks, hy)
        for level in range(depth + 1):
            xs, ys, end = _branch_points(rng, x, y, angle, length)
            px = (xs + anat.tilt * (ys - 0.5)) * grid.size
            py = (ys - anat.tilt * (xs - anat.cx)) * grid.size
            flat = np.stack([px, py], axis=2).reshape(x.size, -1).tolist()
            inks = np.clip(np.rint(value / canvas.vmax * 255.0), 0, 255).astype(int).tolist()
            widths = np.maximum(1, np.rint(width * grid.size)).astype(int).tolist()
            for pts, ink, w in zip(flat, inks, widths, strict=True):
                canvas.draw.line(pts, fill=ink, width=w)
            if level == depth:
                break
            n = x.size
            spread = rng.uniform(0.3, 0.55, n)[:, None] * rng.uniform(0.6, 1.0, (n, 2))
            angle = (end[:, None] + spread * np.array([-1.0, 1.0])).ravel()
            length = (length[:, None] * rng.uniform(0.62, 0.9, (n, 2))).ravel()
            x, y = np.repeat(xs[:, -1], 2), np.repeat(ys[:, -1], 2)
            width = np.repeat(width * 0.7, 2)
            value = np.repeat(value * 0.78, 2)
    return canvas.array()


@functools.lru_cache(maxsize=4)
def _texture_bank(size: int) -> F32:
    """A large fixed field of lung texture; studies take crops at random offsets (cheap)."""
    rng = np.random.default_rng(20240611)
    n = size + size // 2
    fine_cells = max(8, n // 6)
    fine = rng.standard_normal((fine_cells, fine_cells)).astype(np.float32)
    coarse = rng.standard_normal((max(3, n // 24),) * 2).astype(np.float32)
    fine += upsample(coarse, fine_cells)
    bank: F32 = upsample(fine, n) * np.float32(0.014)
    bank.setflags(write=False)
    return bank


def parenchyma(grid: Grid, rng: np.random.Generator) -> F32:
    """Fine lung texture (two octaves of smooth noise) to be weighted by the aerated lung.

    A read-only view into a cached bank: add it, do not modify it.
    """
    bank = _texture_bank(grid.size)
    margin = bank.shape[0] - grid.size
    r, c = (int(v) for v in rng.integers(0, margin + 1, size=2))
    flip = bool(rng.random() < 0.5)
    crop = bank[r : r + grid.size, c : c + grid.size]
    return crop[:, ::-1] if flip else crop
