"""Burned-in annotations (PORTABLE label, laterality marker) and collimator borders.

Text is drawn once per (text, size, style) with PIL's built-in scalable font, which is the same
on every machine, and cached; pasting it into an image is a cheap blend.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from models.phantoms.geometry import F32
from models.phantoms.scenario import TextStyle

MIN_FONT_PX = 6


@functools.lru_cache(maxsize=256)
def text_patch(
    text: str, font_px: int, stroke: int, boxed: bool, inverted: bool
) -> tuple[F32, F32]:
    """(value, alpha) patches for a label: the image becomes ``(1-alpha)*image + alpha*value``."""
    font = ImageFont.load_default(size=max(font_px, MIN_FONT_PX))
    left, top, right, bottom = (int(v) for v in font.getbbox(text, stroke_width=stroke))
    pad = max(2, font_px // 5)
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    glyph = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(glyph)
    draw.text(
        (pad - left, pad - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255
    )
    ink = np.asarray(glyph, dtype=np.float32) / 255.0
    if inverted:
        alpha = np.ones((h, w), dtype=np.float32)
        value = (1.0 - ink) * 0.98
    else:
        alpha = ink.copy()
        value = np.ones((h, w), dtype=np.float32)
        if boxed:
            frame = max(1, font_px // 12)
            alpha[:frame, :] = alpha[-frame:, :] = 1.0
            alpha[:, :frame] = alpha[:, -frame:] = 1.0
    value.setflags(write=False)
    alpha.setflags(write=False)
    return value.astype(np.float32), alpha.astype(np.float32)


def _mirror(position: str) -> str:
    if position.endswith("left"):
        return position[: -len("left")] + "right"
    if position.endswith("right"):
        return position[: -len("right")] + "left"
    return position


#: A pixel belongs to a burned-in label's mask where the label's alpha exceeds this (0: every
#: pixel the label touches, anti-aliased edges included).
TEXT_ALPHA_MIN = 0.0


def place_text(
    image: F32, text: str, style: TextStyle, offset: tuple[float, float], mirror: bool = False
) -> npt.NDArray[np.bool_]:
    """Burn ``text`` into ``image`` (in place) at the style's corner, moved by ``offset``.

    Returns the label's mask: the pixels it touches (alpha above :data:`TEXT_ALPHA_MIN`; the
    whole box of an inverted label).
    """
    size = image.shape[0]
    font_px = round(style.size * size)
    value, alpha = text_patch(text, font_px, style.stroke, style.boxed, style.inverted)
    h, w = alpha.shape
    position = _mirror(style.position) if mirror else style.position
    inset = round(style.inset * size)
    dx, dy = round(offset[0] * size), round(offset[1] * size)
    r0 = inset + dy if position.startswith("top") else size - inset - h + dy
    if position.endswith("left"):
        c0 = inset + dx
    elif position.endswith("right"):
        c0 = size - inset - w + dx
    else:
        c0 = (size - w) // 2 + dx
    r0 = min(max(r0, 0), size - h)
    c0 = min(max(c0, 0), size - w)
    mask = np.zeros(image.shape, dtype=bool)
    if r0 < 0 or c0 < 0:  # the label does not fit (tiny images): skip it
        return mask
    region = image[r0 : r0 + h, c0 : c0 + w]
    region += alpha * (value - region)
    mask[r0 : r0 + h, c0 : c0 + w] = alpha > TEXT_ALPHA_MIN
    return mask


def collimate(
    image: npt.NDArray[np.float32] | npt.NDArray[np.uint8],
    margins: tuple[float, float, float, float],
    level: float,
) -> None:
    """Unexposed borders (left, right, top, bottom fractions) shown bright, in place."""
    size = image.shape[0]
    left, right, top, bottom = (round(m * size) for m in margins)
    if left:
        image[:, :left] = level
    if right:
        image[:, size - right :] = level
    if top:
        image[:top, :] = level
    if bottom:
        image[size - bottom :, :] = level
