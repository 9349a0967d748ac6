"""Grad-CAM overlays as Secondary Capture images (highdicom): one colour image per finding.

Each image is the overlay the gRPC result carries as PNG (:mod:`service.stages.overlay`: the
radiograph in grey at most 512 pixels on its long side, the finding's CAM in the ``jet`` colour
map on top), stored RGB 8-bit in the source study, in one new series, each instance referencing
the source image (Source Image Sequence). Patient and study modules are copied from the source;
the patient orientation too (the overlay is the source image resized, never turned), or left
empty (Type 2) when the source has none.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import UID

from service.core.types import FindingResult, StudyResult
from service.dicom.identity import ALGORITHM_NAME, MANUFACTURER, SC_SERIES_NUMBER

#: The series description every overlay carries.
SERIES_DESCRIPTION = "AI Grad-CAM overlays (unverified, not for diagnosis)"
#: The series description of the counterfactual strips (``triage explain-worker``).
COUNTERFACTUAL_DESCRIPTION = "AI counterfactuals, Latent Shift (unverified, not for diagnosis)"


def overlay_pixels(finding: FindingResult) -> np.ndarray:
    """The finding's overlay as an (H, W, 3) uint8 array."""
    if not finding.overlay_png:
        raise ValueError(f"finding {finding.label!r} has no overlay (include_overlay was off)")
    with Image.open(io.BytesIO(finding.overlay_png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _anatomy(sc: Dataset, source: Dataset) -> None:
    """The source's body part and laterality (an unknown body part: laterality unknown)."""
    for keyword in ("BodyPartExamined", "Laterality"):
        value = source.get(keyword)
        if value:
            setattr(sc, keyword, value)
    if "BodyPartExamined" not in sc and "Laterality" not in sc:
        sc.Laterality = ""  # Type 2C: empty when the body part (and so its pairing) is unknown


def build_overlays(result: StudyResult, source: Dataset, transfer_syntax: str) -> list[Dataset]:
    """One Secondary Capture image per finding of ``result``."""
    series = hd.UID()
    orientation = list(source.get("PatientOrientation") or [])
    images: list[Dataset] = []
    for number, finding in enumerate(result.findings, start=1):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=overlay_pixels(finding),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=number,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"),  # replaced below by the source's own value
            transfer_syntax_uid=UID(transfer_syntax),
        )
        sc.PatientOrientation = orientation if len(orientation) == 2 else []
        _anatomy(sc, source)
        sc.SeriesDescription = SERIES_DESCRIPTION
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.BurnedInAnnotation = "NO"
        sc.DerivationDescription = (
            f"{ALGORITHM_NAME} {result.model_version}: Grad-CAM of {finding.label} "
            f"(probability {finding.probability:.3f}, "
            f"{'present' if finding.present else 'absent'} at threshold {finding.threshold:.3f})"
        )[:1024]
        sc.SourceImageSequence = [_reference(source)]
        images.append(sc)
    return images


def build_counterfactual(
    source: Dataset,
    pixels: np.ndarray,
    *,
    model_version: str,
    explainer: str,
    description: str,
    transfer_syntax: str,
) -> Dataset:
    """The counterfactual strips of one deferred study as one Secondary Capture image (RGB).

    In a new series of the source study, referencing the source image; ``description`` (the
    findings, drops reached and stop rules) goes into DerivationDescription."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(pixels, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=SC_SERIES_NUMBER + 1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # replaced below by the source's own value
        transfer_syntax_uid=UID(transfer_syntax),
    )
    orientation = list(source.get("PatientOrientation") or [])
    sc.PatientOrientation = orientation if len(orientation) == 2 else []
    _anatomy(sc, source)
    sc.SeriesDescription = COUNTERFACTUAL_DESCRIPTION
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"  # the captions are burned into the strips
    sc.DerivationDescription = (
        f"{ALGORITHM_NAME} {model_version}, autoencoder {explainer}: {description}"
    )[:1024]
    sc.SourceImageSequence = [_reference(source)]
    return sc
