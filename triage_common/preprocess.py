"""The one canonical input contract: display image in [0, 1] -> model input (1, S, S) float32.

Training, the export parity checks and the service all call :func:`preprocess`, and the
bundle manifest records the :class:`PreprocessSpec` next to the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from triage_common.dicom_image import FloatImage, load_display

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a display image becomes a model input (travels with the weights)."""

    size: int = 224
    mean: float = 0.5
    std: float = 0.25
    resize: str = "bilinear"  # squash to size x size; chest films are near-square

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON types."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {"size", "mean", "std", "resize"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        spec = cls(**data)
        if spec.size < 32 or spec.std <= 0 or spec.resize not in _FILTERS:
            raise ValueError(f"invalid preprocessing spec: {spec}")
        return spec


_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}


def resize(display: FloatImage, size: int, method: str = "bilinear") -> FloatImage:
    """Resize a float image to ``size`` x ``size`` (antialiased when shrinking)."""
    if display.shape == (size, size):
        return display.astype(np.float32, copy=False)
    image = Image.fromarray(np.ascontiguousarray(display, dtype=np.float32), mode="F")
    out = image.resize((size, size), _FILTERS[method])
    return np.asarray(out, dtype=np.float32)


def preprocess(display: FloatImage, spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """Display image in [0, 1] (H, W) -> normalised model input of shape (1, S, S)."""
    if display.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {display.shape}")
    clipped = np.clip(display, 0.0, 1.0).astype(np.float32, copy=False)
    small = resize(clipped, spec.size, spec.resize)
    return ((small - spec.mean) / spec.std).astype(np.float32)[None, :, :]


def load_image_display(path: Path) -> FloatImage:
    """Load a DICOM, PNG or JPEG file as a display image in [0, 1]."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        with Image.open(path) as img:
            gray = img.convert("I;16") if img.mode in ("I;16", "I") else img.convert("L")
            arr = np.asarray(gray, dtype=np.float32)
        return arr / (65535.0 if gray.mode.startswith("I") else 255.0)
    return load_display(path)


def preprocess_file(path: Path, spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """Load any supported image file and preprocess it (the train-time entry point)."""
    return preprocess(load_image_display(path), spec)
