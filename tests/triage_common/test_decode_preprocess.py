"""DICOM decoding and the canonical preprocessing on the real RG1 chest CR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage_common.dicom_image import (
    DicomDecodeError,
    Window,
    apply_window,
    decode_display,
    read_dataset,
)
from triage_common.preprocess import PreprocessSpec, preprocess, preprocess_file


def test_window_follows_dicom_linear_function() -> None:
    """The VOI window maps centre-width/2 to 0 and centre+width/2 to 1 (PS3.3 C.11.2.1.2.1)."""
    values = np.array([0.0, 2047.5, 4095.0, 5000.0])
    out = apply_window(values, Window(center=2048.0, width=4096.0))
    assert out.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0], abs=1e-6)


def test_monochrome1_is_inverted(rg1_paths: dict[str, Path]) -> None:
    """RG1 is MONOCHROME1: after decoding, the mediastinum is brighter than the lungs."""
    display = decode_display(read_dataset(rg1_paths["UNCR"]))
    h, w = display.shape
    centre = display[h // 3 : 2 * h // 3, w // 2 - w // 20 : w // 2 + w // 20].mean()
    right_lung = display[h // 3 : 2 * h // 3, w // 4 - w // 20 : w // 4 + w // 20].mean()
    assert centre > right_lung + 0.05


def test_lossless_and_lossy_encodings_agree(rg1_paths: dict[str, Path]) -> None:
    """All four RG1 encodings preprocess alike: lossless pairs exactly, lossy within 0.02."""
    spec = PreprocessSpec(size=128)
    x = {n: preprocess_file(p, spec) for n, p in rg1_paths.items()}
    np.testing.assert_allclose(x["J2KR"], x["UNCR"], rtol=0, atol=1e-6, equal_nan=False)
    np.testing.assert_allclose(x["J2KI"], x["UNCI"], rtol=0, atol=1e-6, equal_nan=False)
    # 0.02 of the display range, in normalised units (divided by the std)
    np.testing.assert_allclose(x["UNCI"], x["UNCR"], rtol=0, atol=0.02 / spec.std, equal_nan=False)


def test_bytes_and_path_decode_identically(rg1_paths: dict[str, Path]) -> None:
    """Train-time (from a path) and serve-time (from bytes) preprocessing agree to 1e-6."""
    spec = PreprocessSpec(size=224)
    from_path = preprocess_file(rg1_paths["UNCR"], spec)
    from_bytes = preprocess(decode_display(read_dataset(rg1_paths["UNCR"].read_bytes())), spec)
    assert from_path.shape == (1, 224, 224)
    np.testing.assert_allclose(from_bytes, from_path, rtol=0, atol=1e-6, equal_nan=False)


def test_random_bytes_are_rejected_with_reason() -> None:
    """Bytes that are not DICOM raise DicomDecodeError naming the problem."""
    with pytest.raises(DicomDecodeError, match="DICOM"):
        read_dataset(b"\x00" * 50 + b"not a dicom file at all")


def test_missing_pixel_data_is_rejected(rg1_paths: dict[str, Path]) -> None:
    """A DICOM header without pixel data is refused with a clear reason."""
    ds = read_dataset(rg1_paths["UNCI"], stop_before_pixels=True)
    with pytest.raises(DicomDecodeError, match="no pixel data"):
        decode_display(ds)


def test_preprocess_normalises_with_spec() -> None:
    """A constant image maps to (value - mean) / std at the spec's size."""
    spec = PreprocessSpec(size=64, mean=0.5, std=0.25)
    out = preprocess(np.full((300, 280), 0.75, dtype=np.float32), spec)
    assert out.shape == (1, 64, 64)
    # atol as before; rtol is np.allclose's default, which the check used
    np.testing.assert_allclose(out, 1.0, rtol=1e-5, atol=1e-6, equal_nan=False)


def test_spec_round_trips_and_rejects_unknown_keys() -> None:
    """The preprocessing spec survives JSON and unknown keys are refused by name."""
    spec = PreprocessSpec(size=128)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="colour"):
        PreprocessSpec.from_dict({**spec.to_dict(), "colour": 1})
