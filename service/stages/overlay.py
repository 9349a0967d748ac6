"""PNG overlays: the radiograph in grey with one finding's CAM as a colour map on top.

Only built when a request sets ``include_overlay``. The image is the display image resized to
at most :data:`MAX_SIDE` pixels on its long side; the CAM (at CAM resolution) is stretched over
it with bilinear interpolation, scaled to its own peak, coloured with the ``jet`` map
and blended with an opacity that grows with the CAM value (cold regions leave the film visible).
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import numpy.typing as npt
from PIL import Image

from triage_common.dicom_image import FloatImage

MAX_SIDE = 512
MAX_ALPHA = 0.55


#: matplotlib's ``jet`` colour map as its segment data: (x, value) knots per channel, linear in
#: between (the serving image has no matplotlib; a test compares the table with matplotlib's).
JET_KNOTS: dict[str, tuple[tuple[float, float], ...]] = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


def _channel(knots: tuple[tuple[float, float], ...], n: int) -> npt.NDArray[np.float64]:
    """One channel's lookup table of ``n`` entries, computed as matplotlib computes it."""
    x = np.array([k[0] for k in knots]) * (n - 1)
    y = np.array([k[1] for k in knots])
    grid = (n - 1) * np.linspace(0.0, 1.0, n)
    ind = np.searchsorted(x, grid)[1:-1]
    distance = (grid[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    inner = distance * (y[ind] - y[ind - 1]) + y[ind - 1]
    lut: npt.NDArray[np.float64] = np.clip(np.concatenate([[y[0]], inner, [y[-1]]]), 0.0, 1.0)
    return lut


@cache
def colormap() -> npt.NDArray[np.uint8]:
    """The ``jet`` colour map as a (256, 3) uint8 table."""
    channels = [_channel(JET_KNOTS[c], 256) for c in ("red", "green", "blue")]
    return (np.stack(channels, axis=1) * 255.0 + 0.5).astype(np.uint8)


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
    colours = colormap()[(norm * 255.0).astype(np.uint8)].astype(np.float32)
    grey = np.clip(base, 0.0, 1.0)[..., None] * 255.0
    alpha = (MAX_ALPHA * norm)[..., None]
    rgb = (grey * (1.0 - alpha) + colours * alpha).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
