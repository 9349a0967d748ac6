"""Grad-CAM maps as one FRACTIONAL Segmentation (highdicom): one segment per finding.

Segment *k* is finding *k*'s CAM stretched over the source image's pixel matrix (bilinear, pixel
centres aligned, edges held) and divided by its own peak, so a value is the CAM relative to its
maximum (1: where the map peaks; 0 everywhere when the CAM is zero). The source image is a
projection radiograph without a frame of reference, so the segmentation has the source's rows
and columns (pixel for pixel) and references it; patient and study modules are copied from it.
Segmented property: category "Morphologically Abnormal Structure", type the finding's SNOMED CT
code (:mod:`service.dicom.codes`), algorithm AUTOMATIC (name, version = the bundle id, family
"Artificial Intelligence"). FractionalType PROBABILITY (the only other choice, OCCUPANCY, fits
a map of evidence less well), stored in 8 bits (``MaximumFractionalValue`` 255).

highdicom checks a floating-point map by sorting all its values (``numpy.unique``), 0.9 s for
four RG1-sized maps on this machine; the maps built here are in [0, 1] by construction, so
:class:`_Maps` replaces that one check with a min/max test.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from highdicom.seg.enum import SegmentsOverlapValues
from pydicom.dataset import Dataset
from pydicom.uid import UID

from service.core.types import StudyResult
from service.dicom import codes
from service.dicom.identity import ALGORITHM_NAME, MANUFACTURER, SEG_SERIES_NUMBER

F32 = npt.NDArray[np.float32]
SERIES_DESCRIPTION = "AI Grad-CAM maps (unverified, not for diagnosis)"


def interpolation_matrix(n_out: int, n_in: int) -> F32:
    """(n_out, n_in) weights of linear interpolation with pixel centres aligned, edges held."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    low = np.floor(x).astype(np.intp)
    high = np.minimum(low + 1, n_in - 1)
    frac = (x - low).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, low), 1.0 - frac)
    np.add.at(m, (rows, high), frac)
    return m


def relative_map(cam: F32, rows: int, columns: int) -> F32:
    """``cam`` stretched to ``rows`` x ``columns`` and divided by its peak, in [0, 1]."""
    cam = np.asarray(cam, np.float32)
    up = (
        interpolation_matrix(rows, cam.shape[0])
        @ cam
        @ interpolation_matrix(columns, cam.shape[1]).T
    )
    peak = float(up.max())
    if peak <= 0.0:
        return np.zeros((rows, columns), np.float32)
    out: F32 = np.clip(up / peak, 0.0, 1.0).astype(np.float32)
    return out


class _Maps(hd.seg.Segmentation):
    """highdicom's Segmentation with a min/max range check of fractional maps (module doc)."""

    @classmethod
    def _check_and_cast_pixel_array(
        cls, pixel_array: Any, segment_numbers: Any, segmentation_type: Any, dtype: type
    ) -> tuple[Any, SegmentsOverlapValues]:
        if (
            segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
            and isinstance(pixel_array, np.ndarray)
            and pixel_array.dtype == np.float32
            and pixel_array.ndim == 4
        ):
            if float(pixel_array.min()) < 0.0 or float(pixel_array.max()) > 1.0:
                raise ValueError("fractional maps must lie in [0, 1]")
            overlap = (
                SegmentsOverlapValues.NO
                if pixel_array.shape[-1] == 1
                else SegmentsOverlapValues.UNDEFINED
            )
            return pixel_array, overlap
        checked: tuple[Any, SegmentsOverlapValues] = super()._check_and_cast_pixel_array(
            pixel_array, segment_numbers, segmentation_type, dtype
        )
        return checked


def build_segmentation(result: StudyResult, source: Dataset, transfer_syntax: str) -> Dataset:
    """The FRACTIONAL segmentation of ``result``'s CAMs over ``source``."""
    rows, columns = int(source.Rows), int(source.Columns)
    maps = np.empty((1, rows, columns, len(result.findings)), np.float32)
    for k, finding in enumerate(result.findings):
        maps[0, :, :, k] = relative_map(finding.cam, rows, columns)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, version=result.model_version, family=codes.ARTIFICIAL_INTELLIGENCE
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=f"{finding.label} Grad-CAM"[:64],
            segmented_property_category=codes.ABNORMAL_STRUCTURE,
            segmented_property_type=codes.finding_code(finding.label),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, finding in enumerate(result.findings, start=1)
    ]
    seg = _Maps(
        source_images=[source],
        pixel_array=maps,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME[:64],
        software_versions=result.model_version,
        device_serial_number=result.model_version,
        transfer_syntax_uid=UID(transfer_syntax),
        max_fractional_value=255,
        content_description="Grad-CAM relative to its peak, one segment per finding",
        content_label="GRADCAM",
    )
    orientation = list(source.get("PatientOrientation") or [])
    seg.PatientOrientation = orientation if len(orientation) == 2 else ""
    seg.SeriesDescription = SERIES_DESCRIPTION
    return seg


def read_maps(seg: Dataset) -> F32:
    """The maps of a segmentation made by :func:`build_segmentation`, (segments, rows, columns)
    in [0, 1]; a segment whose map is all zero has no frame (highdicom omits it) and reads as
    zeros."""
    count = len(seg.SegmentSequence)
    out = np.zeros((count, int(seg.Rows), int(seg.Columns)), np.float32)
    frames = np.asarray(seg.pixel_array, np.float32).reshape(-1, int(seg.Rows), int(seg.Columns))
    scale = float(seg.get("MaximumFractionalValue", 255))
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[number - 1] = frame / scale
    return out
