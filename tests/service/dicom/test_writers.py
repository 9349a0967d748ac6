"""The result writers on the real RG1 header: SR library without ImagerPixelSpacing, priority,
KOS for deferred studies, overlays and maps as built."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from service.core.enums import Decision, DeferReason, Priority
from service.core.types import FindingResult, StudyResult, Timings
from service.dicom.objects import Writer, WriterSettings
from service.dicom.seg import interpolation_matrix, read_maps, relative_map
from service.dicom.source import read_source
from service.dicom.sr import read_report
from service.stages.overlay import base_image, overlay_png
from tests.helpers import pydicom_data

LABELS = ("Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax")


def _result(source: pydicom.Dataset, decision: Decision) -> StudyResult:
    rng = np.random.default_rng(7)
    base = base_image(rng.random((source.Rows // 8, source.Columns // 8)).astype(np.float32))
    findings = []
    for i, label in enumerate(LABELS):
        cam = rng.random((4, 4)).astype(np.float32)
        probability = 0.2 * i + 0.1
        findings.append(
            FindingResult(label, probability, 0.4, probability >= 0.4, 0.01 * i, cam,
                          overlay_png(base, cam))
        )  # fmt: skip
    reasons = (DeferReason.P_ERROR_ABOVE_COST,) if decision == Decision.DEFER else ()
    return StudyResult(
        str(source.StudyInstanceUID), str(source.SOPInstanceUID), decision, reasons, 0.3, 0.31,
        0.2, 1.0, 5.0, "policy-1", tuple(findings), "bundle123", (), Timings(1, 1, 1, 1, 1),
        "radiologist", Priority.ROUTINE,
    )  # fmt: skip


def test_rg1_objects_state_the_result_and_the_placed_priority() -> None:
    """On RG1 (no ImagerPixelSpacing, PixelSpacing 0): the SR's library references the source;
    the SR and KOS follow the priority placed, not the routed one; overlays are the PNGs; the
    segment maps are the CAMs stretched and peak-normalised; the source is never modified."""
    source = read_source(pydicom_data.testdata("RG1_UNCR.dcm").read_bytes())
    assert "ImagerPixelSpacing" not in source
    before = source.to_json_dict()
    result = _result(source, Decision.DEFER)
    writer = Writer(WriterSettings(seg_transfer_syntax="1.2.840.10008.1.2.5"))
    prepared = writer.prepare(result, source, ["SR", "SC", "SEG", "KOS"])
    routed = prepared.finish("ROUTINE")
    placed = prepared.finish("STAT")  # an earlier item of the study had STAT
    assert [o.kind for o in routed] == ["SR", "SC", "SC", "SC", "SC", "SEG", "KOS"]
    assert routed[1:6] == placed[1:6] and routed[0] != placed[0]
    assert read_report(pydicom.dcmread(io.BytesIO(routed[0].data))).priority == "ROUTINE"
    report = read_report(pydicom.dcmread(io.BytesIO(placed[0].data)))
    assert report.priority == "STAT" and report.decision == "DEFER"
    assert report.reasons == ("P_ERROR_ABOVE_COST",)
    assert [f.probability for f in report.findings] == [f.probability for f in result.findings]
    sr = pydicom.dcmread(io.BytesIO(placed[0].data))
    library = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    entry = library[0].ContentSequence[0].ContentSequence[0]
    assert entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    for finding, obj in zip(result.findings, placed[1:5], strict=True):
        sc = pydicom.dcmread(io.BytesIO(obj.data))
        png = np.asarray(Image.open(io.BytesIO(finding.overlay_png)).convert("RGB"))
        np.testing.assert_array_equal(sc.pixel_array, png)
        assert sc.PatientOrientation == source.PatientOrientation
    seg = pydicom.dcmread(io.BytesIO(placed[5].data))
    assert (
        "PixelSpacing"
        not in seg.SharedFunctionalGroupsSequence[0].get(
            "PixelMeasuresSequence", [pydicom.Dataset()]
        )[0]
    )
    maps = read_maps(seg)
    for k, finding in enumerate(result.findings):
        want = relative_map(finding.cam, int(source.Rows), int(source.Columns))
        np.testing.assert_allclose(maps[k], want, atol=0.5 / 255 + 1e-6)
    assert source.to_json_dict() == before
    kos = pydicom.dcmread(io.BytesIO(placed[6].data))
    assert kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]


def test_auto_reported_routine_studies_get_no_key_object() -> None:
    """KOS only for deferred or STAT studies."""
    source = read_source(pydicom_data.testdata("RG1_UNCR.dcm").read_bytes())
    objects = Writer(WriterSettings()).prepare(_result(source, Decision.AUTO_REPORT), source,
                                               ["SR", "KOS"]).finish("ROUTINE")  # fmt: skip
    assert [o.kind for o in objects] == ["SR"]


def test_relative_maps_stretch_bilinearly_and_normalise_to_the_peak() -> None:
    """Rows of the interpolation sum to one; a constant CAM gives ones, a zero CAM zeros; a
    2-pixel ramp stretched to 4 matches PIL's bilinear upsampling."""
    m = interpolation_matrix(7, 3)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(relative_map(np.full((2, 2), 3.0, np.float32), 5, 6), 1.0)
    assert not relative_map(np.zeros((2, 2), np.float32), 5, 6).any()
    ramp = np.array([[0.0, 1.0]], np.float32)
    pil = np.asarray(Image.fromarray(ramp, mode="F").resize((4, 1), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(relative_map(ramp, 1, 4), pil / pil.max(), atol=1e-6)
    with pytest.raises(ValueError, match="unknown DICOM object kind"):
        Writer(WriterSettings()).prepare(_result(read_source(
            pydicom_data.testdata("RG1_UNCR.dcm").read_bytes()), Decision.DEFER),
            pydicom.Dataset(), ["PDF"])  # fmt: skip
