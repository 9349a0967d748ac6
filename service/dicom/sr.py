"""The triage result as a Comprehensive 3D SR following TID 1500 (highdicom), and read back.

Content tree (a TID 1500 "Imaging Measurement Report"):

- observation context: the device (``cxr-triage``, its model = the bundle id);
- procedure reported: SNOMED CT "Plain chest X-ray";
- image library (TID 1600): the source image, with its modality, rows and columns and, when the
  source has them, its patient orientation and imager pixel spacing (TID 1603 makes both
  optional; highdicom 0.28 requires ``ImagerPixelSpacing`` of a CR/DX, which the real RG1 chest
  CR lacks, so the library is built here from highdicom's content items);
- one measurement group (TID 1501) per finding: tracking identifier = the label, finding type =
  its SNOMED CT code (:mod:`service.dicom.codes`), the algorithm (name, version = bundle id), a
  qualitative evaluation "<finding> = Present/Absent", and the measurements DCM 122157
  "Probability", DCM 122411 "Threshold Value" (the operating threshold) and the per-label P(error)
  (local code), each referencing the source image;
- one measurement group "triage decision": the decision (AUTO_REPORT / DEFER), each defer reason,
  the reading priority, P(error) and the defer cost applied (local codes).

VerificationFlag is UNVERIFIED (no person has verified the content); CompletionFlag COMPLETE;
PreliminaryFlag PRELIMINARY. :func:`read_report` parses such an SR back into plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from service.core.types import StudyResult
from service.dicom import codes
from service.dicom.identity import ALGORITHM_NAME, DEVICE_UID, MANUFACTURER, SR_SERIES_NUMBER

_PIXELS = Code("{pixels}", "UCUM", "Pixels")
_MM = Code("mm", "UCUM", "mm")


_ACQ = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT


def _num(name: Code, value: float, unit: Code) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name, value, unit, relationship_type=_ACQ)


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name, value, relationship_type=_ACQ)


def _library_entry(source: Dataset) -> hd.sr.ImageContentItem:
    """One TID 1601 entry for ``source`` with the TID 1602/1603 descriptors it has."""
    item = hd.sr.ImageContentItem(
        name=Code("260753009", "SCT", "Source"),
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    content = hd.sr.ContentSequence()
    modality = codes.modality_code(str(source.get("Modality", "") or ""))
    if modality is not None:
        content.append(
            hd.sr.CodeContentItem(
                name=dcm_codes.DCM.Modality, value=modality, relationship_type=_ACQ
            )
        )
    content.append(_num(dcm_codes.DCM.PixelDataRows, int(source.Rows), _PIXELS))
    content.append(_num(dcm_codes.DCM.PixelDataColumns, int(source.Columns), _PIXELS))
    orientation = list(source.get("PatientOrientation") or [])
    if len(orientation) == 2:
        content.append(_text(dcm_codes.DCM.PatientOrientationRow, str(orientation[0])))
        content.append(_text(dcm_codes.DCM.PatientOrientationColumn, str(orientation[1])))
    spacing = source.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) == 2:
        content.append(_num(dcm_codes.DCM.HorizontalPixelSpacing, float(spacing[1]), _MM))
        content.append(_num(dcm_codes.DCM.VerticalPixelSpacing, float(spacing[0]), _MM))
    item.ContentSequence = content
    return item


def _image_library(source: Dataset) -> hd.sr.ContainerContentItem:
    library = hd.sr.ContainerContentItem(
        name=dcm_codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    group = hd.sr.ContainerContentItem(
        name=dcm_codes.DCM.ImageLibraryGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group.ContentSequence = hd.sr.ContentSequence([_library_entry(source)])
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _number(name: Code, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=codes.NO_UNITS)


def _groups(
    result: StudyResult, source: Dataset, priority: str
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=result.model_version)
    image = [hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)]
    groups = []
    for f in result.findings:
        code = codes.finding_code(f.label)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f.label),
                finding_type=code,
                algorithm_id=algorithm,
                measurements=[
                    _number(codes.PROBABILITY, f.probability),
                    _number(codes.THRESHOLD, f.threshold),
                    _number(codes.P_ERROR, f.p_error),
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(code, codes.PRESENT if f.present else codes.ABSENT)
                ],
                source_images=image,
            )
        )
    evaluations = [
        hd.sr.QualitativeEvaluation(codes.TRIAGE_DECISION, codes.DECISIONS[result.decision.name])
    ]
    evaluations += [
        hd.sr.QualitativeEvaluation(codes.DEFER_REASON, codes.REASONS[r.name])
        for r in result.defer_reasons
    ]
    evaluations.append(hd.sr.QualitativeEvaluation(codes.PRIORITY, codes.PRIORITIES[priority]))
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=hd.UID(), identifier=codes.DECISION_GROUP
            ),
            algorithm_id=algorithm,
            measurements=[
                _number(codes.P_ERROR, result.p_error),
                _number(codes.DEFER_COST, result.defer_cost),
            ],
            qualitative_evaluations=evaluations,
            source_images=image,
        )
    )
    return groups


def build_sr(result: StudyResult, source: Dataset, priority: str) -> hd.sr.Comprehensive3DSR:
    """The SR of ``result`` (``priority``: the reading priority placed on the worklist)."""
    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID,
            name=ALGORITHM_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=result.model_version,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=_groups(result, source, priority),
    )
    root = report[0]
    position = next(
        i
        for i, item in enumerate(root.ContentSequence)
        if item.ConceptNameCodeSequence[0].CodeValue == dcm_codes.DCM.ImagingMeasurements.value
    )
    root.ContentSequence.insert(position, _image_library(source))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = "AI triage result (unverified)"
    sr.CodingSchemeIdentificationSequence = [codes.coding_scheme_identification()]
    return sr


@dataclass(frozen=True)
class ReadFinding:
    """One finding as an SR states it."""

    label: str
    present: bool
    probability: float
    threshold: float
    p_error: float


@dataclass(frozen=True)
class ReadReport:
    """What :func:`read_report` finds in an SR written by :func:`build_sr`."""

    findings: tuple[ReadFinding, ...]
    decision: str
    reasons: tuple[str, ...]
    priority: str
    p_error: float
    defer_cost: float
    algorithm_version: str
    source_sop_instance_uid: str


def _value(group: hd.sr.MeasurementsAndQualitativeEvaluations, name: Code) -> float:
    (measurement,) = group.get_measurements(name=name)
    return float(measurement.value)


def _local_value(code: Any, table: dict[str, Code]) -> str:
    return next(key for key, c in table.items() if c.value == code.value)


def read_report(dataset: Dataset) -> ReadReport:
    """The findings and decision of an SR made by :func:`build_sr` (pydicom ``Dataset``)."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset, copy=True)
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("the SR does not follow TID 1500 (no Imaging Measurement Report)")
    findings = []
    decision, reasons, priority = "", [], ""
    p_error = cost = 0.0
    version = source = ""
    for group in report.get_image_measurement_groups():
        version = version or _algorithm_version(group)
        if group.source_images:
            source = str(group.source_images[0].referenced_sop_instance_uid)
        if group.tracking_identifier == codes.DECISION_GROUP:
            for evaluation in group.get_qualitative_evaluations():
                name, value = evaluation.name, evaluation.value
                if name == codes.TRIAGE_DECISION:
                    decision = _local_value(value, codes.DECISIONS)
                elif name == codes.DEFER_REASON:
                    reasons.append(_local_value(value, codes.REASONS))
                elif name == codes.PRIORITY:
                    priority = _local_value(value, codes.PRIORITIES)
            p_error = _value(group, codes.P_ERROR)
            cost = _value(group, codes.DEFER_COST)
            continue
        kind = group.finding_type
        label = codes.label_of(kind.value, kind.scheme_designator) if kind is not None else None
        if label is None:
            continue
        (evaluation,) = group.get_qualitative_evaluations(name=kind)
        findings.append(
            ReadFinding(
                label=label,
                present=evaluation.value == codes.PRESENT,
                probability=_value(group, codes.PROBABILITY),
                threshold=_value(group, codes.THRESHOLD),
                p_error=_value(group, codes.P_ERROR),
            )
        )
    return ReadReport(
        tuple(findings), decision, tuple(reasons), priority, p_error, cost, version, source
    )


def _algorithm_version(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> str:
    for item in group[0].ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "111003":  # DCM Algorithm Version
            return str(item.TextValue)
    return ""
