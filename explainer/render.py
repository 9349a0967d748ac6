"""Pictures of a counterfactual: an animated GIF and a PNG strip, each frame captioned.

Both show the frames in display units (grey, enlarged to :data:`TILE` pixels with bilinear
interpolation) with the finding's probability on each, and the strip ends with the attribution
map over the first frame (the colour map and blending of the Grad-CAM overlays,
:mod:`service.stages.overlay`, scaled to its own peak). The strip's header line states the
finding, the lambda reached, the prediction drop and why the search stopped. PIL only.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from explainer.core import FindingExplanation
from service.stages.overlay import overlay_png

#: Side of one frame in the pictures, pixels.
TILE = 192
#: Height of the caption band above each frame, pixels.
CAPTION = 18
#: Frame time of the GIF, milliseconds (the last frame is held three times as long).
FRAME_MS = 250

_FONT = ImageFont.load_default()


def _grey(frame: npt.NDArray[np.float32]) -> Image.Image:
    pixels = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((TILE, TILE), Image.Resampling.BILINEAR)


def _captioned(image: Image.Image, text: str) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "black")
    tile.paste(image.convert("RGB"), (0, CAPTION))
    ImageDraw.Draw(tile).text((4, 3), text, fill="white", font=_FONT)
    return tile


def attribution_image(explanation: FindingExplanation) -> Image.Image:
    """The attribution map over the first frame, RGB, :data:`TILE` pixels square."""
    png = overlay_png(explanation.frames[0], explanation.attribution.astype(np.float32))
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB").resize((TILE, TILE), Image.Resampling.BILINEAR)


def frame_tiles(explanation: FindingExplanation) -> list[Image.Image]:
    """Each frame captioned with lambda and the finding's probability."""
    return [
        _captioned(_grey(frame), f"lambda {lam:.0f}  p {p:.2f}")
        for frame, lam, p in zip(
            explanation.frames, explanation.lambdas, explanation.predictions, strict=True
        )
    ]


def gif_bytes(explanation: FindingExplanation) -> bytes:
    """The frames as an animated GIF that loops: lambda 0 to the bound."""
    tiles = [t.convert("P", palette=Image.Palette.ADAPTIVE) for t in frame_tiles(explanation)]
    durations = [FRAME_MS] * (len(tiles) - 1) + [FRAME_MS * 3]
    buffer = io.BytesIO()
    tiles[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=tiles[1:],
        duration=durations,
        loop=0,
        disposal=1,
    )
    return buffer.getvalue()


def summary_line(explanation: FindingExplanation) -> str:
    """Finding, drop reached, lambda and the search's stop rule, in one line."""
    e = explanation
    return (
        f"{e.label}: p {e.predictions[0]:.2f} -> {e.predictions[-1]:.2f} "
        f"(drop {e.prediction_drop:.2f}) at lambda {e.lambda_reached:.0f}; "
        f"stopped: {e.stop_rule.value}; image change {100 * e.image_change:.1f}%"
    )


def strip_image(explanation: FindingExplanation) -> Image.Image:
    """Every frame side by side, then the attribution map, under a summary line."""
    tiles = frame_tiles(explanation)
    tiles.append(_captioned(attribution_image(explanation), "attribution"))
    header = CAPTION + 2
    strip = Image.new("RGB", (TILE * len(tiles), TILE + CAPTION + header), "black")
    ImageDraw.Draw(strip).text((4, 4), summary_line(explanation), fill="white", font=_FONT)
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * TILE, header))
    return strip


def strip_png(explanation: FindingExplanation) -> bytes:
    """:func:`strip_image` as PNG bytes."""
    buffer = io.BytesIO()
    strip_image(explanation).save(buffer, format="PNG")
    return buffer.getvalue()


def stacked(images: list[Image.Image]) -> npt.NDArray[np.uint8]:
    """Strips of several findings one above the other, (H, W, 3) uint8 (the Secondary
    Capture's pixels); narrower strips are padded with black on the right."""
    width = max(i.width for i in images)
    sheet = Image.new("RGB", (width, sum(i.height for i in images)), "black")
    top = 0
    for image in images:
        sheet.paste(image, (0, top))
        top += image.height
    return np.asarray(sheet, dtype=np.uint8)
