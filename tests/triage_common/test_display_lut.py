"""The lookup-table path of ``stored_to_display`` equals the per-pixel computation bit for bit."""

from __future__ import annotations

import numpy as np
import pydicom
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from tests.helpers.pydicom_data import testdata as pydicom_data_file
from triage_common.dicom_image import LUT_MIN_RATIO, _stored_to_display, stored_to_display


def test_rg1_lut_is_exact() -> None:
    """RG1 (MONOCHROME1, 15-bit, declared window) maps identically through the table."""
    ds = pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"))
    stored = ds.pixel_array
    assert stored.size >= LUT_MIN_RATIO * 65536
    assert np.array_equal(stored_to_display(ds, stored), _stored_to_display(ds, stored))


@settings(max_examples=25, deadline=None)
@given(
    signed=st.booleans(),
    slope=st.sampled_from([1.0, 0.5, 2.0, -1.0]),
    intercept=st.floats(-2000, 2000),
    center=st.floats(-3000, 3000),
    width=st.floats(1.0, 8000),
    mono1=st.booleans(),
)
def test_lut_is_exact_for_any_window(
    signed: bool, slope: float, intercept: float, center: float, width: float, mono1: bool
) -> None:
    """Signed or unsigned 16-bit data with any rescale and window gives identical displays."""
    ds = Dataset()
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    rng = np.random.default_rng(0)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    stored = rng.integers(info.min, info.max, size=(512, 512), endpoint=True).astype(dtype)
    assert np.array_equal(stored_to_display(ds, stored), _stored_to_display(ds, stored))
