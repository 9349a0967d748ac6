"""Deflated data sets inflated with a bound: valid files work, bombs stop at the limit."""

from __future__ import annotations

import io
import time

import numpy as np
import pydicom
import pytest

from service.core.errors import InvalidStudy, TooLarge
from service.stages.deflate import DEFLATED, inflate_file, transfer_syntax_of
from service.stages.header import read_header
from tests.fuzz import bombs
from tests.helpers.dicom_factory import chest


def test_a_valid_deflated_file_inflates_to_the_same_data_set() -> None:
    """The inflated file is Explicit VR Little Endian with the same image and pixels."""
    deflated = bombs.deflated_chest()
    assert transfer_syntax_of(deflated) == DEFLATED
    inflated = pydicom.dcmread(io.BytesIO(inflate_file(deflated, 0, 1 << 30)))
    original = pydicom.dcmread(io.BytesIO(chest(factor=8, phi=False)))
    assert str(inflated.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1"
    assert (inflated.Rows, inflated.Columns) == (original.Rows, original.Columns)
    assert np.array_equal(inflated.pixel_array, original.pixel_array)


def test_the_header_of_a_deflated_file_is_read_with_its_pixel_data() -> None:
    """A deflated chest CR is found to carry pixel data (it used to be 'no pixel data')."""
    header = read_header(bombs.deflated_chest(), 0, 10**8)
    assert header.has_pixel_data and header.inflated is not None


def test_a_deflate_bomb_stops_at_the_limit_without_inflating_it_all() -> None:
    """A stream inflating to 2 GiB is refused as soon as it passes the limit, quickly."""
    bomb = bombs.deflate_bomb(2 << 30)
    start = time.monotonic()
    with pytest.raises(TooLarge, match=r"more than 8388608 bytes \(decode.max_inflated_bytes\)"):
        inflate_file(bomb, 3, 8 << 20)
    assert time.monotonic() - start < 0.5  # 8 MiB inflated, not 2 GiB


def test_a_corrupt_deflate_stream_is_invalid_argument() -> None:
    """Bytes that are not deflate data are refused naming the problem."""
    deflated = bytearray(bombs.deflated_chest())
    meta_end = 144 + int.from_bytes(deflated[140:144], "little")
    deflated[meta_end : meta_end + 16] = b"\xff" * 16
    with pytest.raises(InvalidStudy, match="not valid deflate data"):
        inflate_file(bytes(deflated), 0, 1 << 30)
