"""Rendered images as DICOM Part-10 files: CR Image Storage or DX For Presentation.

Every value is derived from the study spec (no clock, no random UIDs), so the same spec always
gives the same bytes. Patient identifiers are synthetic.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from models.phantoms.render import RenderedImage
from models.phantoms.study import StudySpec

CR_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.1.1"
TRANSFER_SYNTAX: Final = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k": JPEG2000Lossless,
}
SOFTWARE: Final = "cxr-triage phantom"


def _age(birth: str, on: str) -> str:
    b = dt.datetime.strptime(birth, "%Y%m%d").date()
    d = dt.datetime.strptime(on, "%Y%m%d").date()
    years = d.year - b.year - ((d.month, d.day) < (b.month, b.day))
    return f"{max(years, 0):03d}Y"


def build_dataset(spec: StudySpec, image: RenderedImage, software_version: str) -> Dataset:
    """The DICOM dataset (without transfer syntax) for one rendered image of ``spec``."""
    site = spec.site
    frontal = image.view != "LL"
    dx = site.modality == "DX"
    top = image.max_value
    monochrome1 = image.photometric == "MONOCHROME1"
    rows, cols = image.stored.shape
    patient = spec.patient

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_PRESENTATION_STORAGE if dx else CR_IMAGE_STORAGE
    ds.SOPInstanceUID = spec.frontal_sop_uid if frontal else spec.lateral_sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.Modality = site.modality
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = site.manufacturer
    ds.InstitutionName = site.name
    ds.ReferringPhysicianName = ""
    ds.StationName = site.station
    ds.StudyDescription = "XR CHEST 2 VIEWS" if spec.lateral else f"XR CHEST {spec.view}"
    ds.SeriesDescription = "CHEST LAT" if not frontal else f"CHEST {image.view}"
    ds.ManufacturerModelName = site.model
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth_date, spec.study_date)
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "110" if spec.view == "PA" or not frontal else "90"
    ds.SoftwareVersions = f"{SOFTWARE} {software_version}"
    ds.ViewPosition = image.view
    if dx:
        ds.DetectorType = "SCINTILLATOR"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.frontal_series_uid if frontal else spec.lateral_series_uid
    ds.StudyID = f"{spec.index + 1}"
    ds.SeriesNumber = 1 if frontal else 2
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"] if frontal else ["P", "F"]
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
    ds.PhotometricInterpretation = image.photometric
    ds.Rows = rows
    ds.Columns = cols
    spacing = f"{spec.pixel_spacing_mm:.6f}".rstrip("0").rstrip(".")
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = image.bits_stored
    ds.HighBit = image.bits_stored - 1
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
    ds.save_as(path, enforce_file_format=True)
