"""Rendered images as DICOM Part-10 files: CR Image Storage or DX For Presentation.

Every value is derived from the study spec (no clock, no random UIDs), so the same spec always
gives the same bytes. Patient identifiers are synthetic.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from models.phantoms.render import RenderedImage
from models.phantoms.study import StudySpec, age_years

CR_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.1.1"
TRANSFER_SYNTAX: Final = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k": JPEG2000Lossless,
}
SOFTWARE: Final = "cxr-triage phantom"
#: ViewCodeSequence of DX images (DICOM CID 4010 "DX View", SNOMED CT codes).
_VIEW_CODES: Final = {
    "PA": codes.SCT.PosteroAnterior,
    "AP": codes.SCT.AnteroPosterior,
    "LL": codes.SCT.LeftLateral,
}


def _age(birth: str, on: str) -> str:
    return f"{age_years(birth, on):03d}Y"


@dataclass(frozen=True)
class _Equipment:
    """What fixes the elements shared by every image one site's device writes at one size."""

    modality: str
    manufacturer: str
    institution: str
    station: str
    model: str
    photometric: str
    bits_stored: int
    rows: int
    cols: int
    software_version: str


@functools.lru_cache(maxsize=64)
def _equipment_elements(eq: _Equipment) -> Dataset:
    """The elements that do not depend on the patient, study or view (built once, never changed).

    Every image's dataset starts with copies of these elements (so nothing done to one
    image's dataset reaches the next) and pydicom writes them exactly as if they had been
    built one by one.
    """
    dx = eq.modality == "DX"
    top = (1 << eq.bits_stored) - 1
    monochrome1 = eq.photometric == "MONOCHROME1"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_PRESENTATION_STORAGE if dx else CR_IMAGE_STORAGE
    ds.Modality = eq.modality
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = eq.manufacturer
    ds.InstitutionName = eq.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = eq.station
    ds.ManufacturerModelName = eq.model
    ds.BodyPartExamined = "CHEST"
    ds.SoftwareVersions = f"{SOFTWARE} {eq.software_version}"
    if dx:
        ds.DetectorType = "SCINTILLATOR"
    ds.InstanceNumber = 1
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "YES"
    ds.LossyImageCompression = "00"
    if dx:
        region = Dataset()
        region.CodeValue = "43799004"
        region.CodingSchemeDesignator = "SCT"
        region.CodeMeaning = "Chest"
        ds.AnatomicRegionSequence = Sequence([region])
        ds.AcquisitionContextSequence = Sequence([])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = eq.photometric
    ds.Rows = eq.rows
    ds.Columns = eq.cols
    ds.BitsAllocated = 16
    ds.BitsStored = eq.bits_stored
    ds.HighBit = eq.bits_stored - 1
    ds.PixelRepresentation = 0
    if dx:
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if monochrome1 else -1
    ds.WindowCenter = str((top + 1) // 2)
    ds.WindowWidth = str(top + 1)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    if dx:
        ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    return ds


@functools.lru_cache(maxsize=64)
def _equipment_encoded(eq: _Equipment) -> dict[int, tuple[object, bytes]]:
    """Each equipment element's value and its Explicit VR Little Endian bytes, encoded once."""
    shared = _equipment_elements(eq)
    encoded: dict[int, tuple[object, bytes]] = {}
    for element in shared:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, element, shared.SpecificCharacterSet)
        encoded[int(element.tag)] = (element.value, fp.getvalue())
    return encoded


def _equipment(spec: StudySpec, image: RenderedImage, software_version: str) -> _Equipment:
    site = spec.site
    rows, cols = image.stored.shape
    return _Equipment(
        modality=site.modality,
        manufacturer=site.manufacturer,
        institution=site.name,
        station=site.station,
        model=site.model,
        photometric=image.photometric,
        bits_stored=image.bits_stored,
        rows=rows,
        cols=cols,
        software_version=software_version,
    )


def build_dataset(spec: StudySpec, image: RenderedImage, software_version: str) -> Dataset:
    """The DICOM dataset (without transfer syntax) for one rendered image of ``spec``."""
    frontal = image.view != "LL"
    patient = spec.patient
    site = spec.site
    shared = _equipment_elements(_equipment(spec, image, software_version))
    ds = Dataset({tag: copy.copy(element) for tag, element in shared.items()})
    ds.file_meta = FileMetaDataset()
    ds.SOPInstanceUID = spec.frontal_sop_uid if frontal else spec.lateral_sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.StudyDescription = "XR CHEST 2 VIEWS" if spec.lateral else f"XR CHEST {spec.view}"
    ds.SeriesDescription = "CHEST LAT" if not frontal else f"CHEST {image.view}"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth_date, spec.study_date)
    ds.KVP = "110" if spec.view == "PA" or not frontal else "90"
    ds.ViewPosition = image.view
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.frontal_series_uid if frontal else spec.lateral_series_uid
    ds.StudyID = f"{spec.index + 1}"
    ds.SeriesNumber = 1 if frontal else 2
    ds.PatientOrientation = ["L", "F"] if frontal else ["P", "F"]
    if site.modality == "DX":
        # DX Positioning: the view as a code (CID 4010) and the positioner (a bedside
        # portable film has none; the rest stand at a wall column)
        code = _VIEW_CODES[image.view]
        view = Dataset()
        view.CodeValue = code.value
        view.CodingSchemeDesignator = code.scheme_designator
        view.CodeMeaning = code.meaning
        view.ViewModifierCodeSequence = Sequence([])
        ds.ViewCodeSequence = Sequence([view])
        ds.PositionerType = "NONE" if frontal and spec.portable else "COLUMN"
    spacing = f"{spec.pixel_spacing_mm:.6f}".rstrip("0").rstrip(".")
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    return ds


def encode(ds: Dataset, image: RenderedImage, syntax: str) -> None:
    """Attach the stored pixels to ``ds`` in the transfer syntax named ``syntax``."""
    uid = TRANSFER_SYNTAX[syntax]
    if syntax == "explicit":
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = image.stored.astype("<u2", copy=False).tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.compress(uid, image.stored, encoding_plugin="pylibjpeg", generate_instance_uid=False)


def write_image(
    path: Path, spec: StudySpec, image: RenderedImage, syntax: str, software_version: str
) -> None:
    """Write one rendered image of ``spec`` as a DICOM Part-10 file at ``path``."""
    ds = build_dataset(spec, image, software_version)
    encode(ds, image, syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = _equipment_encoded(_equipment(spec, image, software_version))
    path.write_bytes(part10_bytes(ds, encoded))


def part10_bytes(ds: Dataset, encoded: Mapping[int, tuple[object, bytes]]) -> bytes:
    """``ds`` as Part-10 bytes, the same as ``ds.save_as(..., enforce_file_format=True)`` writes.

    pydicom encodes every element (the file meta through ``write_file_meta_info``, the rest
    through ``write_data_element``, in ascending tag order); an element whose value is still
    the very object in ``encoded`` is not encoded again but copied from there. That halves the
    time spent writing a phantom (most elements are the same for every image of a device), and
    a test compares the bytes with ``save_as``'s.
    """
    meta = ds.file_meta
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    charset = ds.SpecificCharacterSet
    for tag in sorted(ds.keys()):
        element = ds.get_item(tag)
        known = encoded.get(int(tag))
        if known is not None and element.value is known[0]:
            fp.write(known[1])
        else:
            write_data_element(fp, element, charset)
    return fp.getvalue()
