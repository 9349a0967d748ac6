"""The four findings as local changes to the frontal anatomy, each with its ground-truth mask.

A finding of severity 0 is absent (no effect at all). Each finding draws its own randomness
(side, texture, line positions) from its own generator, and changes attenuation only inside its
mask, so a rendered image differs from the finding-free one only within the mask (widened by the
blur kernel). Low severities are deliberately subtle: a blunted costophrenic angle, a thin apical
rim without markings, a faint perihilar haze, a cardiothoracic ratio just above 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from models.phantoms.anatomy import (
    LEFT,
    RIGHT,
    SIGMA,
    Anatomy,
    HeartShape,
    LungField,
    compact_bump,
    heart_occupancy,
    normal_heart,
)
from models.phantoms.geometry import F32, Bool, Box, Grid, smooth_field


@dataclass
class Effect:
    """How a finding changes the frontal layers, and where (``mask``, image-sized)."""

    mask: Bool
    add: list[tuple[Box, F32]] = field(default_factory=list)  # attenuation added
    air_keep: dict[str, F32] = field(default_factory=dict)  # lung air multiplied (per side box)
    markings_keep: list[tuple[Box, F32]] = field(default_factory=list)  # vessels multiplied
    heart: HeartShape | None = None  # replaces the normal heart


def _paste_mask(mask: Bool, win: Box, values: Bool) -> None:
    mask[win.index] |= values


# -------------------------------------------------------------------------------- cardiomegaly


def cardiomegaly_ctr(anat: Anatomy, severity: float) -> float:
    """Target cardiothoracic ratio: just over 0.5 at low severity, about 0.7 at severity 1."""
    return max(anat.heart_ctr, 0.51 + 0.19 * severity)


def cardiomegaly(
    grid: Grid,
    anat: Anatomy,
    lungs: dict[str, LungField],
    severity: float,
    rng: np.random.Generator,
) -> Effect:
    """Enlarged cardiac silhouette (mostly to the patient's left and down).

    Mask: the enlarged silhouette above the hemidiaphragms (and the lung recesses behind them,
    where the heart still displaces a little air); below that the heart merges with the abdomen.
    """
    normal = normal_heart(anat)
    target = cardiomegaly_ctr(anat, severity)
    heart = normal_heart(
        anat, target, roundness=severity * rng.uniform(0.03, 0.12), drop=0.03 * severity
    )
    floor = np.full(grid.size, max(anat.cp_left, anat.cp_right) + 0.045)
    for lung in lungs.values():
        cols = lung.window.cols
        floor[cols] = lung.dome_y + 0.045
    mask = np.zeros((grid.size, grid.size), dtype=bool)
    for shape in (normal, heart):
        win, occ = heart_occupancy(grid, shape)
        above = grid.y[win.rows][:, None] < floor[win.cols][None, :]
        _paste_mask(mask, win, (occ > 0) & above)
    return Effect(mask=mask, heart=heart)


# -------------------------------------------------------------------------------- effusion


def effusion_sides(rng: np.random.Generator, severity: float) -> dict[str, float]:
    """Which hemithoraces hold fluid, and how much (right-sided and bilateral are commonest)."""
    u = rng.random()
    other = severity * rng.uniform(0.4, 1.0)
    if u < 0.4:
        return {RIGHT: severity}
    if u < 0.65:
        return {LEFT: severity}
    return {RIGHT: severity, LEFT: other}


def pleural_effusion(
    grid: Grid, lungs: dict[str, LungField], severity: float, rng: np.random.Generator
) -> Effect:
    """Basal fluid with a meniscus rising laterally; small amounts only blunt the angle."""
    mask = np.zeros((grid.size, grid.size), dtype=bool)
    effect = Effect(mask=mask)
    for side, sev in effusion_sides(rng, severity).items():
        lung = lungs[side]
        height = 0.015 + 0.45 * sev
        ramp = 0.012 + 0.05 * sev
        ys = grid.y[lung.window.rows][:, None]
        s = np.clip(lung.s, 0.0, 1.0)
        surface = lung.cp - height * (0.3 + 0.7 * s * s)
        fluid = np.clip((ys - surface) / ramp, 0.0, 1.0)
        inside = (lung.air > 0.0) & (fluid > 0.0)
        fluid = np.where(inside, fluid, 0.0)
        effect.air_keep[side] = (1.0 - 0.97 * fluid).astype(np.float32)
        _paste_mask(mask, lung.window, inside)
    return effect


# -------------------------------------------------------------------------------- pneumothorax


def pneumothorax(
    grid: Grid, lungs: dict[str, LungField], severity: float, rng: np.random.Generator
) -> Effect:
    """Apicolateral pleural air: no lung markings, more lucent, a thin visceral pleural line."""
    side = RIGHT if rng.random() < 0.55 else LEFT
    lung = lungs[side]
    depth = 0.006 + 0.11 * severity
    line_w = max(1.3 / grid.size, 0.0022)
    height = lung.cp - lung.top
    t = np.maximum(lung.t, 0.0)
    taper = 0.25 + 0.75 * np.clip(1.0 - t, 0.0, 1.0) ** 1.5
    lateral = (1.0 - lung.s) * lung.width / taper
    medial = np.where(t < 0.3, lung.s * lung.width / np.maximum(taper - 0.35, 0.05), np.inf)
    apical = t * height / 1.3
    rho = np.minimum(np.minimum(lateral, apical), medial)
    in_lung = (lung.s >= 0.0) & (lung.s <= 1.0) & (lung.above_dome > 0.0) & (lung.air > 0.0)
    space = in_lung & (rho < depth)
    line = in_lung & (rho >= depth) & (rho < depth + line_w)
    wobble = 1.0 + 0.15 * np.sin(t * rng.uniform(8.0, 14.0) + rng.uniform(0, 2 * math.pi))
    lucency = np.where(
        space, -(0.07 + 0.08 * severity) * (0.6 + 0.4 * np.clip(lung.air, 0.0, 1.0)), 0.0
    )
    pleura = np.where(line, (0.06 + 0.06 * severity) * wobble, 0.0)
    mask = np.zeros((grid.size, grid.size), dtype=bool)
    _paste_mask(mask, lung.window, space | line)
    return Effect(
        mask=mask,
        add=[(lung.window, (lucency + pleura).astype(np.float32))],
        markings_keep=[(lung.window, np.where(space, 0.0, 1.0).astype(np.float32))],
    )


# -------------------------------------------------------------------------------- edema


def edema(
    grid: Grid,
    anat: Anatomy,
    lungs: dict[str, LungField],
    severity: float,
    rng: np.random.Generator,
) -> Effect:
    """Bilateral perihilar ("bat-wing") haze, patchy when severe, and basal Kerley B lines."""
    mask = np.zeros((grid.size, grid.size), dtype=bool)
    effect = Effect(mask=mask)
    patches = smooth_field(rng, grid.size, max(6, grid.size // 20))
    amplitude = 0.01 + 0.3 * severity
    for side in (RIGHT, LEFT):
        lung = lungs[side]
        sigma = SIGMA[side]
        hx = anat.cx + sigma * (anat.medial + 0.07)
        hy = anat.body.hilum_y + (anat.lung_top - anat.body.lung_top) + 0.03
        rx, ry = 0.2 + 0.05 * severity, 0.26
        hwin, bump = compact_bump(grid, hx, hy, rx, ry)
        lw = lung.window
        # the haze lives on the lung window: take the bump's overlap
        haze = np.zeros(lung.air.shape, dtype=np.float32)
        r0, r1 = max(hwin.r0, lw.r0), min(hwin.r1, lw.r1)
        c0, c1 = max(hwin.c0, lw.c0), min(hwin.c1, lw.c1)
        if r1 > r0 and c1 > c0:
            haze[r0 - lw.r0 : r1 - lw.r0, c0 - lw.c0 : c1 - lw.c0] = bump[
                r0 - hwin.r0 : r1 - hwin.r0, c0 - hwin.c0 : c1 - hwin.c0
            ]
        presence = np.clip(lung.air / 0.4, 0.0, 1.0)
        texture = 1.0 + 0.8 * severity * np.clip(patches[lw.index], -1.2, 1.2)
        add = amplitude * haze * presence * texture
        support = (haze > 0.0) & (lung.air > 0.0)
        # Kerley B lines: short horizontal lines reaching the lateral pleura at the bases
        n_lines = 2 + round(10 * severity)
        rows = lung.window.r1 - lung.window.r0
        row_amp = np.zeros((rows, 1), dtype=np.float32)
        row_len = np.zeros((rows, 1), dtype=np.float32)
        thick = max(1, round(1.6 * grid.scale))
        height = lung.cp - lung.top
        for _ in range(n_lines):
            y = lung.cp - height * rng.uniform(0.02, 0.3)
            r = int(y * grid.size) - lung.window.r0
            length = rng.uniform(0.015, 0.035)
            strength = (0.02 + 0.07 * severity) * rng.uniform(0.6, 1.0)
            if 0 <= r < rows - thick:
                row_amp[r : r + thick] = strength
                row_len[r : r + thick] = length
        reach = (1.0 - lung.s) * lung.width
        kerley_zone = (lung.s >= 0.5) & (lung.s <= 1.0) & (lung.above_dome > 0.0)
        kerley = np.where(kerley_zone & (reach < row_len), row_amp, 0.0)
        add = add + kerley
        effect.add.append((lung.window, add.astype(np.float32)))
        _paste_mask(mask, lung.window, support | (kerley > 0.0))
    return effect
