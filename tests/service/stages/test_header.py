"""The header stage: facts read without pixels, budgets checked before any decode."""

from __future__ import annotations

import io

import pydicom
import pytest

from service.core.errors import TooLarge
from service.stages.header import ASPECT_MIN_PIXELS, ViewReader, read_header
from tests.fuzz import bombs
from tests.helpers.dicom_factory import chest, file_bytes


def test_view_reader_parses_like_bytes_io() -> None:
    """pydicom reads the same data set through the zero-copy reader as through BytesIO."""
    data = file_bytes("RG1_UNCR.dcm")
    via_view = pydicom.dcmread(ViewReader(memoryview(data)), stop_before_pixels=True)
    via_bytes = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert via_view == via_bytes


def test_header_from_a_memoryview_equals_the_header_from_bytes() -> None:
    """read_header gives the same facts for a view on an arena as for the bytes themselves."""
    data = chest()
    assert read_header(memoryview(data), 0, 10**8) == read_header(data, 0, 10**8)


def test_small_images_of_any_shape_pass_the_aspect_budget() -> None:
    """The aspect-ratio budget applies above ASPECT_MIN_PIXELS only: a 64 x 4096 image is cheap."""
    data = bombs.rle_zeros(64, 4096)
    assert ASPECT_MIN_PIXELS >= 64 * 4096
    assert read_header(data, 0, 10**8, max_aspect_ratio=4.0).rows == 64


def test_compression_ratio_budget_counts_the_bytes_after_the_header() -> None:
    """A compressed image is refused when its declared size exceeds the ratio times its
    compressed bytes, and accepted when the ratio allows it."""
    data = bombs.rle_zeros(2000, 2000)  # 8 MB declared from about 125 KB: 64:1
    header = read_header(data, 0, 10**8, max_compression_ratio=100.0)
    assert header.rows == 2000
    with pytest.raises(TooLarge, match=r"a ratio above 50 \(decode.max_compression_ratio\)"):
        read_header(data, 0, 10**8, max_compression_ratio=50.0)


def test_uncompressed_images_are_not_held_to_the_ratio() -> None:
    """Native pixel data carries its decoded bytes, so the ratio budget does not apply."""
    assert read_header(file_bytes("RG1_UNCR.dcm"), 0, 10**8, max_compression_ratio=1.0).rows
