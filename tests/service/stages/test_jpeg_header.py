"""The JPEG header reader: the frame size from the SOF marker, without decoding."""

from __future__ import annotations

import io

import pydicom
from pydicom.encaps import get_frame

from service.stages.jpeg_header import jpeg_frame_size
from tests.helpers.dicom_factory import file_bytes


def test_jpeg_frame_size() -> None:
    """The SOF marker of a JPEG codestream gives its size; garbage gives None."""
    ds = pydicom.dcmread(io.BytesIO(file_bytes("JPEG-LL.dcm")))
    frame = bytes(get_frame(ds.PixelData, 0, number_of_frames=1))
    assert jpeg_frame_size(frame) == (ds.Columns, ds.Rows)
    assert jpeg_frame_size(b"\xff\xd8\xff\xda\x00\x02") is None
    assert jpeg_frame_size(b"not a jpeg") is None
