"""DICOM Part-10 bytes -> a display image in [0, 1] (MONOCHROME2 sense), without torch.

The order follows PS3.3 C.11: stored values -> Modality LUT (rescale slope/intercept) ->
VOI (window centre/width, or a VOI LUT, or a robust percentile window when the file has
neither) -> MONOCHROME1 inversion. The result is what a radiologist sees, scaled to [0, 1].
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

FloatImage = npt.NDArray[np.float32]

#: Percentiles used for the window when a file carries no VOI information.
FALLBACK_WINDOW_PERCENTILES = (0.5, 99.5)


class DicomDecodeError(ValueError):
    """The bytes are not decodable DICOM, or the pixel data cannot be decoded."""


@dataclass(frozen=True)
class Window:
    """A linear VOI window (PS3.3 C.11.2.1.2.1)."""

    center: float
    width: float


def read_dataset(source: bytes | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Parse a Part-10 file (or its bytes); raise :class:`DicomDecodeError` with the reason."""
    try:
        if isinstance(source, Path):
            return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
        return pydicom.dcmread(io.BytesIO(source), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise DicomDecodeError(f"not a DICOM Part-10 file: {exc}") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DicomDecodeError(f"malformed DICOM: {type(exc).__name__}: {exc}") from exc


def _first(value: Any) -> float:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def dataset_window(ds: Dataset) -> Window | None:
    """The first window the file declares, or ``None``."""
    center = ds.get("WindowCenter")
    width = ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        w = Window(_first(center), _first(width))
    except (TypeError, ValueError, IndexError):
        return None
    return w if w.width >= 1.0 else None


def apply_window(values: npt.NDArray[np.float64], window: Window) -> FloatImage:
    """Linear VOI function of PS3.3 C.11.2.1.2.1, mapped to [0, 1]."""
    c, w = window.center, window.width
    if w <= 1.0:
        return (values > c - 0.5).astype(np.float32)
    out = (values - (c - 0.5)) / (w - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def percentile_window(values: npt.NDArray[np.float64]) -> Window:
    """A robust window from the image itself, for files without VOI attributes."""
    lo, hi = np.percentile(values, FALLBACK_WINDOW_PERCENTILES)
    if hi <= lo:
        hi = lo + 1.0
    return Window(center=(lo + hi) / 2.0 + 0.5, width=(hi - lo) + 1.0)


#: A per-value mapping is computed once per possible stored value and looked up (bit-identical
#: to computing it per pixel) when the image has at least this many times more pixels than the
#: table has entries (2^BitsAllocated): several times faster on radiographs.
LUT_MIN_RATIO = 2


def stored_to_display(ds: Dataset, stored: npt.NDArray[Any]) -> FloatImage:
    """Map a stored pixel array of ``ds`` to display values in [0, 1] (bright = attenuating)."""
    if stored.ndim == 3:  # multi-frame: the first frame is the image we read
        stored = stored[0]
    if stored.ndim != 2:
        raise DicomDecodeError(f"expected a single-frame grayscale image, got shape {stored.shape}")
    small_ints = stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2
    entries = 1 << (8 * stored.dtype.itemsize)
    window = dataset_window(ds)
    if small_ints and stored.size >= LUT_MIN_RATIO * entries and window is not None:
        # With a declared window every step (rescale, window, inversion) maps each stored value
        # on its own, so the same float64 code run over all 2^bits values gives a lookup table
        # whose entries equal the per-pixel results exactly. A stream of images from one
        # device shares one table.
        unsigned = np.dtype(f"u{stored.dtype.itemsize}")
        mapping = _Mapping(*_rescale(ds), window, _is_monochrome1(ds))
        return np.take(_window_lut(stored.dtype.str, mapping), stored.view(unsigned))
    return _stored_to_display(ds, stored)


@dataclass(frozen=True)
class _Mapping:
    """Everything a windowed display mapping depends on (hashable: it keys the table cache)."""

    slope: float
    intercept: float
    window: Window
    monochrome1: bool


@functools.lru_cache(maxsize=64)
def _window_lut(dtype: str, mapping: _Mapping) -> FloatImage:
    """The display value of every stored value of ``dtype`` under ``mapping`` (read-only)."""
    stored_type = np.dtype(dtype)
    domain = np.arange(1 << (8 * stored_type.itemsize), dtype=f"u{stored_type.itemsize}")
    values = domain.view(stored_type).astype(np.float64) * mapping.slope + mapping.intercept
    lut = _windowed(values, mapping.window, mapping.monochrome1)
    lut.setflags(write=False)
    return lut


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def _is_monochrome1(ds: Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1"


def _windowed(values: npt.NDArray[np.float64], window: Window, monochrome1: bool) -> FloatImage:
    display = apply_window(values, window)
    if monochrome1:
        display = (1.0 - display).astype(np.float32)
    return display


def _stored_to_display(ds: Dataset, stored: npt.NDArray[Any]) -> FloatImage:
    slope, intercept = _rescale(ds)
    values = stored.astype(np.float64) * slope + intercept
    window = dataset_window(ds)
    monochrome1 = _is_monochrome1(ds)
    if window is not None:
        # Window centre/width are given in modality (rescaled) units.
        return _windowed(values, window, monochrome1)
    if "VOILUTSequence" in ds:
        from pydicom.pixels.processing import apply_voi_lut

        lut = np.asarray(apply_voi_lut(stored, ds), dtype=np.float64)
        lo, hi = float(lut.min()), float(lut.max())
        display = ((lut - lo) / max(hi - lo, 1e-12)).astype(np.float32)
        return (1.0 - display).astype(np.float32) if monochrome1 else display
    return _windowed(values, percentile_window(values), monochrome1)


def decode_display(ds: Dataset) -> FloatImage:
    """Decode the pixel data of ``ds`` and return the display image in [0, 1]."""
    return stored_to_display(ds, decode_stored(ds))


def decode_stored(ds: Dataset) -> npt.NDArray[Any]:
    """The stored pixel values of ``ds``'s (first) frame, checked to be grayscale."""
    if "PixelData" not in ds:
        raise DicomDecodeError("the DICOM file has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomDecodeError(f"unsupported PhotometricInterpretation {photometric!r}")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        raise DicomDecodeError(
            f"pixel data cannot be decoded: {type(exc).__name__}: {exc}"
        ) from exc
    stored = np.asarray(stored)
    return stored[0] if stored.ndim == 3 else stored


def load_display(path: Path) -> FloatImage:
    """Read a DICOM file from disk and return its display image in [0, 1]."""
    return decode_display(read_dataset(path))
