"""Render a study: attenuation -> detector response -> blur, noise -> borders, text -> bits.

``render_frontal(spec, size)`` returns the display image (float, [0, 1], bright = attenuating),
the stored integer pixels exactly as written to DICOM (MONOCHROME1 stored inverted), one
boolean mask per finding, and the anatomy and burned-in-text masks of :data:`ANATOMY_MASKS`
(where the generator drew the lung fields, the heart, the body and each label; computed beside
the image, never changing a pixel of it). Every step after the attenuation map is pointwise or
a blur of known reach, and the noise comes from the study's own stream, so a finding changes
pixels only inside its mask widened by ``blur_reach``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from models.phantoms import findings as fx
from models.phantoms import streams
from models.phantoms.anatomy import (
    SIDES,
    LungField,
    airways,
    body_tissue,
    breasts,
    heart_occupancy,
    hila,
    lung_field,
    measured_ctr,
    mediastinum_occupancy,
    normal_heart,
    parenchyma,
    skeleton,
    vessels,
)
from models.phantoms.geometry import (
    F32,
    Bool,
    Box,
    Grid,
    blur,
    blur_reach,
    grid_for,
    triangular_noise,
    upsample,
)
from models.phantoms.lateral import lateral_attenuation
from models.phantoms.overlays import collimate, place_text
from models.phantoms.study import Exposure, StudySpec
from triage_common.anatomy import ANATOMY_KEYS
from triage_common.labels import (
    CARDIOMEGALY,
    DEFAULT_LABELS,
    EDEMA,
    PLEURAL_EFFUSION,
    PNEUMOTHORAX,
)

U16 = npt.NDArray[np.uint16]

#: From this image size up, smooth layers are rendered at half resolution (see smooth_scale).
HALF_RES_FROM: Final = 384

#: The anatomy and overlay masks of a frontal image, in the order they are written (``masks/
#: anatomy/<sop_uid>.npz``; what each holds: :mod:`triage_common.anatomy`).
ANATOMY_MASKS: Final = ANATOMY_KEYS
#: A lung field is where the aerated thickness exceeds this share (before heart and mediastinum).
LUNG_AIR_MIN: Final = 0.05
#: The heart silhouette is where it fills more than this share of the beam path.
HEART_MIN: Final = 0.1
#: The body is where soft tissue attenuates more than this (normalised attenuation units).
BODY_MIN: Final = 0.05


@dataclass(frozen=True)
class RenderedImage:
    """One rendered image: display floats, stored integers, masks (frontal only)."""

    view: str
    image: F32
    stored: U16
    photometric: str
    bits_stored: int
    masks: dict[str, Bool]
    blur_reach: int
    ctr: float | None
    anatomy: dict[str, Bool] | None = None  # frontal only: ANATOMY_MASKS


@dataclass(frozen=True)
class RenderedStudy:
    """The frontal image and, when the study has one, the lateral image."""

    frontal: RenderedImage
    lateral: RenderedImage | None


def _findings(grid: Grid, spec: StudySpec, lungs: dict[str, LungField]) -> dict[str, fx.Effect]:
    anat = spec.anatomy
    makers: dict[str, Callable[[float, np.random.Generator], fx.Effect]] = {
        CARDIOMEGALY: lambda sev, rng: fx.cardiomegaly(grid, anat, lungs, sev, rng),
        EDEMA: lambda sev, rng: fx.edema(grid, anat, lungs, sev, rng),
        PLEURAL_EFFUSION: lambda sev, rng: fx.pleural_effusion(grid, lungs, sev, rng),
        PNEUMOTHORAX: lambda sev, rng: fx.pneumothorax(grid, lungs, sev, rng),
    }
    out: dict[str, fx.Effect] = {}
    for label in DEFAULT_LABELS:
        severity = spec.severities.get(label, 0.0)
        if severity > 0.0:
            out[label] = makers[label](severity, streams.finding_rng(spec.seed, spec.index, label))
    return out


def smooth_scale(size: int) -> int:
    """How much coarser the smooth layers are rendered than the image (2 from 384 px up)."""
    return 2 if size >= HALF_RES_FROM and size % 2 == 0 else 1


def _nearest_up(mask: Bool, scale: int) -> Bool:
    if scale == 1:
        return mask
    out: Bool = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
    return out


def _place(window: Box, values: Bool, size: int) -> Bool:
    """A full-size mask holding ``values`` at ``window`` (False elsewhere)."""
    out = np.zeros((size, size), dtype=bool)
    out[window.index] = values
    return out


def frontal_attenuation(
    spec: StudySpec, size: int
) -> tuple[F32, dict[str, Bool], float, dict[str, Bool]]:
    """The frontal attenuation map, the finding masks, the rendered cardiothoracic ratio, and
    the anatomy masks (lung fields, heart, body; see :data:`ANATOMY_MASKS`).

    Smooth layers (soft tissue, aerated lung, heart, mediastinum, findings) are computed on a
    grid ``smooth_scale(size)`` times coarser and interpolated; drawn detail (bones, vessels,
    airways) and lung texture are drawn at full resolution.
    """
    scale = smooth_scale(size)
    grid, work = grid_for(size), grid_for(size // scale)
    anat = spec.anatomy
    lungs = {side: lung_field(work, anat, side) for side in SIDES}
    effects = _findings(work, spec, lungs)
    heart = effects[CARDIOMEGALY].heart if CARDIOMEGALY in effects else None
    heart = heart or normal_heart(anat)
    smooth = body_tissue(work, anat)
    small = work.size
    anatomy = {
        f"lung_{side}": _place(lung.window, lung.air > LUNG_AIR_MIN, small)
        for side, lung in lungs.items()
    }
    heart_window, heart_fill = heart_occupancy(work, heart)
    anatomy["heart"] = _place(heart_window, heart_fill > HEART_MIN, small)
    anatomy["body"] = smooth > BODY_MIN
    # Everything about aerated lung happens in the window holding both lungs.
    w = lungs[SIDES[0]].window
    for lung in lungs.values():
        w = Box(min(w.r0, lung.window.r0), max(w.r1, lung.window.r1),
                min(w.c0, lung.window.c0), max(w.c1, lung.window.c1))  # fmt: skip
    air = np.zeros((w.r1 - w.r0, w.c1 - w.c0), dtype=np.float32)
    for side, lung in lungs.items():
        lung_air = lung.air
        for effect in effects.values():
            if side in effect.air_keep:
                lung_air = lung_air * effect.air_keep[side]
        lw = lung.window
        air[lw.r0 - w.r0 : lw.r1 - w.r0, lw.c0 - w.c0 : lw.c1 - w.c0] += lung_air
    # the heart and mediastinum displace lung from the beam path
    # (the mediastinum follows the patient's own heart, so cardiomegaly stays in its mask)
    normal = normal_heart(anat)
    for win, occ in (heart_occupancy(work, heart), mediastinum_occupancy(work, anat, normal)):
        part = _overlap(win, w)
        if part is not None:
            src, dst = part
            air[dst] *= 1.0 - occ[src]
    keep = air * np.float32(-anat.body.air)
    keep += np.float32(1.0)
    smooth[w.index] *= keep
    # where lung markings show: aerated lung, less pleural air (pneumothorax)
    presence = np.zeros_like(smooth)
    np.multiply(air, np.float32(2.5), out=presence[w.index])
    np.minimum(presence, 1.0, out=presence)
    for effect in effects.values():
        for win, factor in effect.markings_keep:
            presence[win.index] *= factor
    for win, add in hila(work, anat) + breasts(work, anat):
        smooth[win.index] += add
    for effect in effects.values():
        for win, add in effect.add:
            smooth[win.index] += add
    if scale > 1:
        smooth, presence = upsample(smooth, size), upsample(presence, size)
    mu = smooth
    markings = vessels(grid, anat)
    markings += parenchyma(grid, streams.study_rng(spec.seed, spec.index, streams.TEXTURE))
    markings *= presence
    mu += markings
    mu += skeleton(grid, anat)
    mu -= airways(grid, anat)
    np.maximum(mu, 0.0, out=mu)
    empty = np.zeros((size, size), dtype=bool)
    masks = {
        label: _nearest_up(effects[label].mask, scale) if label in effects else empty
        for label in DEFAULT_LABELS
    }
    drawn = {name: _nearest_up(mask, scale) for name, mask in anatomy.items()}
    drawn["lungs"] = drawn[f"lung_{SIDES[0]}"] | drawn[f"lung_{SIDES[1]}"]
    return mu, masks, measured_ctr(anat, heart), drawn


def _overlap(a: Box, b: Box) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Index pairs (into a's array, into b's array) of the overlap of two windows, if any."""
    r0, r1, c0, c1 = max(a.r0, b.r0), min(a.r1, b.r1), max(a.c0, b.c0), min(a.c1, b.c1)
    if r1 <= r0 or c1 <= c0:
        return None
    return (
        (slice(r0 - a.r0, r1 - a.r0), slice(c0 - a.c0, c1 - a.c0)),
        (slice(r0 - b.r0, r1 - b.r0), slice(c0 - b.c0, c1 - b.c0)),
    )


def collimation_mask(size: int, exposure: Exposure) -> Bool:
    """Where :func:`acquire` shows the unexposed collimator borders."""
    out = np.zeros((size, size), dtype=bool)
    if exposure.collimation is not None:
        collimate(out.view(np.uint8), exposure.collimation, 1)
    return out


def acquire(mu: F32, exposure: Exposure, rng: np.random.Generator) -> F32:
    """Detector response, site processing, blur and quantum noise (all local operations)."""
    size = mu.shape[0]
    grid = grid_for(size)
    heel = (1.0 + exposure.heel * (grid.y - 0.5)).astype(np.float32)
    image = mu * (heel * np.float32(-exposure.gain))[:, None]
    np.exp(image, out=image)
    np.subtract(np.float32(1.0), image, out=image)
    if exposure.contrast != 1.0 or exposure.brightness != 0.0:
        image *= np.float32(exposure.contrast)
        image += np.float32(0.5 - 0.5 * exposure.contrast + exposure.brightness)
    np.clip(image, 0.0, 1.0, out=image)
    if exposure.gamma != 1.0:
        np.power(image, np.float32(exposure.gamma), out=image)
    image = blur(image, exposure.blur * grid.scale)
    if exposure.collimation is not None:
        collimate(image, exposure.collimation, exposure.collimation_level)
    noise = triangular_noise(rng, image.shape)
    sigma = image * np.float32(0.8 * exposure.noise)
    sigma += np.float32(0.4 * exposure.noise)
    noise *= sigma
    image += noise
    return image


def quantize(image: F32, bits: int, photometric: str) -> U16:
    """Stored pixel values: round(image * max) for MONOCHROME2, max minus that for MONOCHROME1."""
    top = (1 << bits) - 1
    scaled = image * np.float32(top)
    np.clip(scaled, 0.0, float(top), out=scaled)
    np.rint(scaled, out=scaled)
    stored = scaled.astype(np.uint16)
    if photometric == "MONOCHROME1":
        np.subtract(np.uint16(top), stored, out=stored)
    return stored


def render_frontal(spec: StudySpec, size: int, *, photometric: str | None = None) -> RenderedImage:
    """Render the frontal (PA/AP) image of ``spec`` at ``size`` x ``size`` pixels."""
    mu, masks, ctr, anatomy = frontal_attenuation(spec, size)
    exposure = spec.exposure
    image = acquire(mu, exposure, streams.study_rng(spec.seed, spec.index, streams.NOISE))
    site = spec.site
    anatomy["text_portable"] = np.zeros((size, size), dtype=bool)
    if spec.portable:
        anatomy["text_portable"] = place_text(
            image, site.portable_label.text, site.portable_label, exposure.portable_offset
        )
    marker = site.marker_label.text.replace("{letter}", spec.marker)
    anatomy["text_marker"] = place_text(
        image, marker, site.marker_label, exposure.marker_offset, mirror=spec.marker == "R"
    )
    anatomy["text"] = anatomy["text_portable"] | anatomy["text_marker"]
    anatomy["collimation"] = collimation_mask(size, exposure)
    np.clip(image, 0.0, 1.0, out=image)
    photo = photometric or site.photometric
    return RenderedImage(
        view=spec.view,
        image=image,
        stored=quantize(image, site.bits_stored, photo),
        photometric=photo,
        bits_stored=site.bits_stored,
        masks=masks,
        blur_reach=blur_reach(exposure.blur * grid_for(size).scale) + smooth_scale(size),
        ctr=ctr,
        anatomy={name: anatomy[name] for name in ANATOMY_MASKS},
    )


def render_lateral(spec: StudySpec, size: int, *, photometric: str | None = None) -> RenderedImage:
    """Render the left-lateral (LL) image of ``spec`` (rendered even if the study has none)."""
    grid = grid_for(size)
    mu = lateral_attenuation(grid, spec.anatomy, spec.severities)
    exposure = spec.lateral_exposure
    image = acquire(mu, exposure, streams.study_rng(spec.seed, spec.index, streams.LATERAL_NOISE))
    site = spec.site
    place_text(image, site.marker_label.text.replace("{letter}", "L"), site.marker_label,
               exposure.marker_offset)  # fmt: skip
    np.clip(image, 0.0, 1.0, out=image)
    photo = photometric or site.photometric
    return RenderedImage(
        view="LL",
        image=image,
        stored=quantize(image, site.bits_stored, photo),
        photometric=photo,
        bits_stored=site.bits_stored,
        masks={},
        blur_reach=blur_reach(exposure.blur * grid.scale),
        ctr=None,
    )


def render_study(spec: StudySpec, size: int) -> RenderedStudy:
    """Render every image of a study."""
    return RenderedStudy(
        frontal=render_frontal(spec, size),
        lateral=render_lateral(spec, size) if spec.lateral else None,
    )
