"""Hostile DICOM built on purpose: decompression bombs and lying headers, as an attacker makes them.

Each function returns a Part-10 file of a frontal chest CR whose pixel data costs far more to
decode than its size suggests. They are small to build (no slow encoder runs), so tests and the
fuzz campaign can make them on the fly.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from tests.helpers.dicom_factory import chest, jpeg_baseline_chest, to_bytes


def _chest_ds(rows: int, columns: int) -> pydicom.Dataset:
    ds = pydicom.dcmread(io.BytesIO(chest(factor=16, phi=False)))
    ds.Rows, ds.Columns = rows, columns
    return ds


def rle_zeros(rows: int, columns: int) -> bytes:
    """An RLE Lossless CR of ``rows`` x ``columns`` 16-bit zeros: about 1.6 % of its size."""
    n = rows * columns
    runs, rest = divmod(n, 128)
    segment = np.tile(np.array([0x81, 0x00], np.uint8), runs).tobytes()  # 128 x 0, repeated
    if rest:  # a run of r >= 2 is coded 257 - r; a single byte is a literal of one
        segment += bytes([257 - rest, 0x00]) if rest > 1 else b"\x00\x00"
    if len(segment) % 2:
        segment += b"\x00"
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds = _chest_ds(rows, columns)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def _patched_sof(codestream: bytes, marker: bytes, rows: int, columns: int) -> bytes:
    at = codestream.index(marker)
    # SOFn: marker, length (2), precision (1), height (2), width (2)
    return codestream[: at + 5] + struct.pack(">HH", rows, columns) + codestream[at + 9 :]


def jpeg_declaring(rows: int, columns: int) -> bytes:
    """A small JPEG baseline image whose SOF0 (and header) declare ``rows`` x ``columns``."""
    ds = pydicom.dcmread(io.BytesIO(jpeg_baseline_chest()))
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([_patched_sof(bytes(frame), b"\xff\xc0", rows, columns)])
    ds.Rows, ds.Columns = rows, columns
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return to_bytes(ds)


def jpegls_declaring(rows: int, columns: int) -> bytes:
    """pydicom's 16-bit JPEG-LS test image relabelled as a chest CR, its SOF55 (and header)
    declaring ``rows`` x ``columns``."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([_patched_sof(bytes(frame), b"\xff\xf7", rows, columns)])
    ds.Rows, ds.Columns = rows, columns
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    return to_bytes(ds)


def j2k_declaring(rows: int, columns: int) -> bytes:
    """A small JPEG 2000 codestream whose SIZ (and header) declare ``rows`` x ``columns``."""
    ds = _chest_ds(64, 64)
    ds.PixelData = np.zeros((64, 64), np.uint16).tobytes()
    ds.compress(JPEG2000Lossless)
    frame = bytes(pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1))
    at = frame.index(b"\xff\x51")
    # SIZ: marker, Lsiz (2), Rsiz (2), Xsiz (4), Ysiz (4), XOsiz, YOsiz, XTsiz (4), YTsiz (4)
    patched = (
        frame[: at + 6]
        + struct.pack(">II", columns, rows)
        + frame[at + 14 : at + 22]
        + struct.pack(">II", columns, rows)
        + frame[at + 30 :]
    )
    ds.PixelData = encapsulate([patched])
    ds.Rows, ds.Columns = rows, columns
    return to_bytes(ds)


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR file whose data set inflates to about ``inflated_bytes`` of zeros
    (a 1 GiB data set in about 1 MB)."""
    ds = _chest_ds(64, 64)
    ds.PixelData = np.zeros((64, 64), np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    real = to_bytes(ds)
    meta_end = 144 + int.from_bytes(real[140:144], "little")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # a full flush ends byte-aligned with an empty window: the block can be repeated as is
    block = compressor.compress(b"\x00" * (1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # empty last block
    return real[:meta_end] + block * max(1, inflated_bytes >> 20) + final


def deflated_chest() -> bytes:
    """A valid Deflated Explicit VR Little Endian frontal chest CR."""
    ds = pydicom.dcmread(io.BytesIO(chest(factor=8, phi=False)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(ds)
