"""PNG overlays: the radiograph in grey with one finding's CAM as a colour map on top.

Only built when a request sets ``include_overlay``. The image is the display image resized to
at most :data:`MAX_SIDE` pixels on its long side; the CAM (at CAM resolution) is stretched over
it with bilinear interpolation, scaled to its own peak, coloured with matplotlib's ``jet`` map
and blended with an opacity that grows with the CAM value (cold regions leave the film visible).
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from triage_common.dicom_image import FloatImage

MAX_SIDE = 512
MAX_ALPHA = 0.55


@cache
def _colormap() -> npt.NDArray[np.uint8]:
    """The ``jet`` colour map as a (256, 3) uint8 table (matplotlib imported only on first use)."""
    from matplotlib import colormaps

    cmap: Any = colormaps["jet"]
    table = np.asarray(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5)
    return table.astype(np.uint8)


def base_image(display: FloatImage) -> FloatImage:
    """The display image at overlay size (long side at most :data:`MAX_SIDE`)."""
    h, w = display.shape
    scale = min(1.0, MAX_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = Image.fromarray(np.ascontiguousarray(display, dtype=np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def overlay_png(base: FloatImage, cam: npt.NDArray[np.float32]) -> bytes:
    """PNG bytes of ``base`` (values in [0, 1]) with ``cam`` as a heat map."""
    h, w = base.shape
    heat = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32), mode="F")
    heat_arr = np.asarray(heat.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    peak = float(heat_arr.max())
    norm = np.clip(heat_arr / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(heat_arr)
    colours = _colormap()[(norm * 255.0).astype(np.uint8)].astype(np.float32)
    grey = np.clip(base, 0.0, 1.0)[..., None] * 255.0
    alpha = (MAX_ALPHA * norm)[..., None]
    rgb = (grey * (1.0 - alpha) + colours * alpha).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
