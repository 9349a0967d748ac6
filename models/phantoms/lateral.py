"""A simpler left-lateral (LL) chest view: the patient faces the image left.

Both lungs superimpose into one lucent field between the sternum and the posterior chest wall,
the heart fills the anterior-inferior chest, the vertebral bodies run down the back, and the
hemidiaphragms curve down to the posterior costophrenic sulcus. No masks are produced for
laterals; findings show as they typically do on a lateral film (fluid in the posterior sulcus,
a heart filling the retrocardiac space, hilar haze).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from models.phantoms.anatomy import Anatomy, compact_bump
from models.phantoms.geometry import F32, F64, Grid, box, soft_step
from triage_common.labels import CARDIOMEGALY, EDEMA, PLEURAL_EFFUSION


def _canvas(grid: Grid) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("L", (grid.size, grid.size), 0)
    return image, ImageDraw.Draw(image)


def lateral_attenuation(grid: Grid, anat: Anatomy, severities: dict[str, float]) -> F32:
    """Attenuation map of the lateral view for this anatomy and these findings."""
    n = grid.size
    b = anat.body
    shift = (anat.cx - 0.5) * 0.5
    y = grid.y.astype(np.float64)
    x = grid.x
    top = anat.lung_top + 0.01
    base = anat.cp_right + 0.03  # posterior costophrenic sulcus
    # skin lines per row: neck, chest, abdomen
    neck = np.clip((y - (top - 0.08)) / 0.14, 0.0, 1.0)
    neck = neck * neck * (3 - 2 * neck)
    front = 0.4 - (0.4 - (0.17 - b.fat)) * neck + 0.015 * np.clip((y - 0.6) / 0.3, 0, 1) + shift
    back = 0.7 + (0.87 + 0.5 * b.fat - 0.7) * neck + shift
    centre, half = (front + back) / 2.0, (back - front) / 2.0
    thick = 1.35 * b.tissue * (1.0 + 0.2 * np.clip((y - base + 0.1) / 0.2, 0.0, 1.0))
    mu = np.subtract(x[None, :], centre.astype(np.float32)[:, None])
    mu *= (1.0 / half).astype(np.float32)[:, None]
    np.square(mu, out=mu)
    np.subtract(np.float32(1.0), mu, out=mu)
    np.maximum(mu, 0.0, out=mu)
    np.sqrt(mu, out=mu)
    np.sqrt(mu, out=mu)
    mu *= thick.astype(np.float32)[:, None]
    # the lung field (rows top..base): between the retrosternal line and the posterior wall
    r0, r1 = int(top * n), min(n, int((base + 0.03) * n) + 1)
    ys = y[r0:r1]
    t = np.clip((ys - top) / (base - top), 0.0, 1.2)
    ant = front[r0:r1] + 0.035 + 0.3 * (1.0 - np.clip(t / 0.35, 0.0, 1.0)) ** 2
    post = back[r0:r1] - 0.045 - 0.12 * (1.0 - np.clip(t / 0.35, 0.0, 1.0)) ** 2
    s = np.subtract(x[None, :], ant.astype(np.float32)[:, None])
    s *= (1.0 / (post - ant)).astype(np.float32)[:, None]
    # (all full-size arrays stay float32: numpy scalars would promote them to float64)
    out = np.subtract(np.float32(1.0), s)
    out *= s
    out *= np.float32(4.0)
    np.clip(out, 0.0, 1.0, out=out)
    np.subtract(np.float32(1.0), out, out=out)  # 1 - q
    inside = out * out
    inside *= out
    np.subtract(np.float32(1.0), inside, out=inside)  # 1 - (1 - q)^3
    vertical = (0.55 + 0.45 * np.clip(t / 0.4, 0.0, 1.0)) * np.sqrt(np.clip(t / 0.06, 0, 1))
    inside *= vertical.astype(np.float32)[:, None]
    # hemidiaphragms: high anteriorly, lowest at the posterior sulcus
    a0, a1 = float(ant.min()), float(post.max())
    sx = np.clip((x - a0) / (a1 - a0), 0.0, 1.0)
    dome = base - 0.12 + 0.05 * (1.0 - sx) - 0.03 * np.sin(np.pi * sx**0.9) + 0.12 * sx**3
    above = np.subtract(dome.astype(np.float32)[None, :], ys.astype(np.float32)[:, None])
    inside *= soft_step(above, 0.008)
    above *= np.float32(0.25 / 0.06)
    np.clip(above, 0.0, 0.25, out=above)
    above += np.float32(0.75)
    inside *= above
    eff = severities.get(PLEURAL_EFFUSION, 0.0)
    if eff > 0.0:
        level = base - (0.02 + 0.4 * eff) * (0.25 + 0.75 * sx**2)
        fluid = np.clip(
            (ys.astype(np.float32)[:, None] - level[None, :]) / (0.01 + 0.04 * eff), 0, 1
        )
        inside *= 1.0 - 0.95 * fluid
    # heart: anterior-inferior; cardiomegaly fills the retrocardiac space
    card = severities.get(CARDIOMEGALY, 0.0)
    grow = 1.0 + (0.15 + 0.3 * card if card > 0 else 0.0)
    size = anat.heart_ctr / 0.45
    hx = float(front[int(0.6 * n)]) + 0.035 + 0.14 * size * grow
    hy = base - 0.2
    rx, ry = 0.15 * size * grow, 0.15 * size * math.sqrt(grow)
    c, sn = math.cos(-0.5), math.sin(-0.5)
    hwin = box(grid, hx - 1.2 * rx, hx + 1.2 * rx, hy - 1.2 * ry, hy + 1.2 * ry)
    dx = (x[hwin.cols] - hx)[None, :]
    dy = (grid.y[hwin.rows] - hy)[:, None]
    u = (dx * c + dy * sn) / rx
    v = (dy * c - dx * sn) / ry
    heart = 0.82 * np.sqrt(np.clip((1.0 - u * u - v * v) * 4.0, 0.0, 1.0))
    air = np.zeros((n, n), dtype=np.float32)
    air[r0:r1] = inside
    air[hwin.index] *= 1.0 - heart
    keep = air * np.float32(-0.7 * b.air)
    keep += np.float32(1.0)
    mu *= keep
    # hila and edema haze
    hilum_x = float(front[int(0.4 * n)] + back[int(0.4 * n)]) / 2.0 + 0.03
    win, bump = compact_bump(grid, hilum_x, b.hilum_y + 0.01, 0.07, 0.08)
    mu[win.index] += bump * np.float32(0.14)
    ed = severities.get(EDEMA, 0.0)
    if ed > 0.0:
        win, bump = compact_bump(grid, hilum_x, b.hilum_y + 0.04, 0.22, 0.26)
        presence = np.clip(air[win.index] / 0.3, 0.0, 1.0)
        mu[win.index] += bump * presence * np.float32(0.012 + 0.18 * ed)
    mu += _bones(grid, front, back, top, shift)
    mu -= _airway(grid, top, shift)
    np.maximum(mu, 0.0, out=mu)
    return mu


def _bones(grid: Grid, front: F64, back: F64, top: float, shift: float) -> F32:
    """Vertebral bodies and posterior elements, sternum, raised humeri, faint rib arcs."""
    n = grid.size
    vmax = 0.25
    image, draw = _canvas(grid)
    ribs, rdraw = _canvas(grid)

    def ink(value: float) -> int:
        return round(value / vmax * 255)

    level = 0.047
    yy = top - 0.12
    while yy < 1.05:
        r = min(max(int(yy * n), 0), n - 1)
        bx = float(back[r]) - 0.17
        corners = [(-0.045, -0.38), (0.04, -0.4), (0.04, 0.4), (-0.045, 0.38)]
        draw.polygon([((bx + cx) * n, (yy + cy * level) * n) for cx, cy in corners], fill=ink(0.16))
        draw.polygon(
            [((bx + 0.045) * n, (yy - 0.012) * n), ((bx + 0.12) * n, (yy + 0.02) * n),
             ((bx + 0.12) * n, (yy + 0.034) * n), ((bx + 0.045) * n, (yy + 0.012) * n)],
            fill=ink(0.09),
        )  # fmt: skip
        if top < yy < top + 0.6:
            rdraw.arc(
                ((bx - 0.35) * n, (yy - 0.05) * n, (bx + 0.1) * n, (yy + 0.25) * n),
                start=190, end=300, fill=ink(0.05), width=max(1, int(0.01 * n)),
            )  # fmt: skip
        yy += level
    r0, r1 = int((top + 0.08) * n), int((top + 0.45) * n)
    sx0, sx1 = float(front[r0]) + 0.025, float(front[r1]) + 0.025
    draw.line([(sx0 * n, r0), (sx1 * n, r1)], fill=ink(0.14), width=max(1, int(0.014 * n)))
    # raised arms: humeri crossing the upper chest from the top
    for dx in (0.0, 0.05):
        hx = 0.42 + shift + dx
        draw.line([(hx * n, -0.02 * n), ((hx - 0.12) * n, (top + 0.2) * n)],
                  fill=ink(0.15), width=max(1, int(0.035 * n)))  # fmt: skip
    out = np.asarray(image, dtype=np.float32) + np.asarray(ribs, dtype=np.float32)
    out *= np.float32(vmax / 255.0)
    return out


def _airway(grid: Grid, top: float, shift: float) -> F32:
    n = grid.size
    image, draw = _canvas(grid)
    draw.line([((0.5 + shift) * n, 0), ((0.56 + shift) * n, (top + 0.27) * n)],
              fill=153, width=max(1, int(0.022 * n)))  # fmt: skip
    out = np.asarray(image, dtype=np.float32) * np.float32(0.25 / 255.0)
    return out
