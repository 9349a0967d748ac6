"""The JPEG 2000 codestream reader: SIZ/COD parsing and the choice of a reduced level."""

from __future__ import annotations

import io

import pydicom
from pydicom.encaps import get_frame

from service.stages.j2k import choose_level, parse_codestream, reduced_size
from tests.helpers.dicom_factory import file_bytes


def _rg1_j2k_frame() -> bytes:
    """The JPEG 2000 codestream of the real RG1 chest CR (lossless)."""
    ds = pydicom.dcmread(io.BytesIO(file_bytes("RG1_J2KR.dcm")))
    return bytes(get_frame(ds.PixelData, 0, number_of_frames=1))


def test_j2k_levels() -> None:
    """The reduced level keeps at least min_scale x the model size on the short side."""
    frame_info = parse_codestream(_rg1_j2k_frame())
    assert (frame_info.width, frame_info.height, frame_info.levels) == (1841, 1955, 5)
    assert frame_info.precision == 15 and not frame_info.signed
    assert reduced_size(1841, 2) == 461  # OpenJPEG's rounding (Pillow's would give 460)
    assert choose_level(frame_info, 224, 2.0) == 2
    assert choose_level(frame_info, 224, 1.0) == 3
    assert choose_level(frame_info, 1024, 2.0) == 0
