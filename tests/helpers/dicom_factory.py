"""DICOM files for the service tests, made from the real RG1 chest CR of pydicom-data.

``chest`` writes a smaller uncompressed copy of RG1 (block-averaged, same VOI and photometric)
with chosen header values, so most server tests decode in a millisecond; the patient-data
fields get distinctive strings that the privacy tests look for.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.helpers.pydicom_data import testdata

PHI = {
    "PatientName": "Zyxwquux^Patient",
    "PatientID": "PID-98765-UNIQUE",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "ACC-55555-UNIQUE",
}


def to_bytes(ds: Dataset) -> bytes:
    """Serialise a data set as a Part-10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def rg1_small(factor: int = 4) -> Dataset:
    """RG1_UNCR with its pixels block-averaged by ``factor`` (uncompressed, 15-bit)."""
    ds = pydicom.dcmread(testdata("RG1_UNCR.dcm"))
    arr = ds.pixel_array.astype(np.float64)
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    small = arr[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    ds.PixelData = small.round().astype(np.uint16).tobytes()
    ds.Rows, ds.Columns = small.shape
    return ds


_BASE: dict[int, bytes] = {}


def chest(
    *,
    study_uid: str | None = None,
    factor: int = 4,
    phi: bool = True,
    **attributes: Any,
) -> bytes:
    """A small frontal chest CR; ``attributes`` set header keywords (None deletes one)."""
    if factor not in _BASE:
        _BASE[factor] = to_bytes(rg1_small(factor))
    ds = pydicom.dcmread(io.BytesIO(_BASE[factor]))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if phi:
        for key, value in PHI.items():
            setattr(ds, key, value)
    for key, value in attributes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return to_bytes(ds)


def without_pixels(data: bytes) -> bytes:
    """The same file with its PixelData element removed."""
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    return to_bytes(ds)


def huge_header(rows: int = 65535, columns: int = 65535) -> bytes:
    """A CR chest header claiming ``rows`` x ``columns`` 16-bit pixels, with 64 bytes of data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00" * 64
    return to_bytes(ds)


def file_bytes(name: str) -> bytes:
    """The bytes of a pydicom-data file."""
    return testdata(name).read_bytes()


def with_study_uid(data: bytes, uid: str) -> bytes:
    """A copy of a Part-10 file moved into the study ``uid``."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID = uid
    return to_bytes(ds)


def as_chest(data: bytes, **attributes: Any) -> bytes:
    """A copy of any grayscale Part-10 file relabelled as a frontal chest CR (pixels untouched)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    if not ds.get("StudyInstanceUID"):
        ds.StudyInstanceUID = generate_uid()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return to_bytes(ds)


def decompressed(data: bytes) -> bytes:
    """The same file with its pixel data decoded and stored uncompressed."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.decompress()
    return to_bytes(ds)


def jpeg_baseline_chest() -> bytes:
    """RG1 (small) as 8-bit MONOCHROME2 JPEG baseline (Pillow-encoded, encapsulated)."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = rg1_small(4)
    arr = ds.pixel_array.astype(np.float64)
    eight = (255.0 - arr / arr.max() * 255.0).round().astype(np.uint8)  # MONOCHROME1 -> 2
    buffer = io.BytesIO()
    Image.fromarray(eight, mode="L").save(buffer, format="JPEG", quality=90)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    for key in ("WindowCenter", "WindowWidth"):
        if key in ds:
            delattr(ds, key)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.StudyInstanceUID = generate_uid()
    return to_bytes(ds)
