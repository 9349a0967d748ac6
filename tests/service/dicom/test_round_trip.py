"""Phantom studies and RG1 sent by dcmtk's storescu come back to a storescp as valid SR+SC+SEG."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest

from service._proto.triage.v1 import triage_pb2
from service.dicom.seg import read_maps, relative_map
from service.dicom.sr import read_report
from service.rpc.server import TriageServer
from tests.helpers import pydicom_data
from tests.helpers.dcmtk import dciodvfy_errors, require, storescp, storescu
from tests.helpers.dicom_factory import with_study_uid
from tests.helpers.dicom_servers import DicomServerFactory, destination, study_of
from tests.helpers.servers import open_stub

pytestmark = pytest.mark.slow

#: Probabilities from two runs of the same input may differ in the last float32 bits (batching).
TOLERANCE = 1e-5


def _studies(phantoms: Path, count: int) -> dict[str, list[Path]]:
    by_study: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(phantoms.glob("**/*.dcm")):
        if "mask" not in path.name:
            by_study[study_of(path)].append(path)
    return dict(list(by_study.items())[:count])


def _grpc(port: int, files: list[Path]) -> triage_pb2.TriageResult | None:
    channel, stub = open_stub(port)
    try:
        request = triage_pb2.TriageRequest(instances=[p.read_bytes() for p in files])
        return stub.Triage(request, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
        return None
    finally:
        channel.close()


def _phi_values(files: list[Path]) -> set[str]:
    values = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            value = str(ds.get(key, "") or "")
            if len(value) >= 4:
                values.add(value)
    return values


def test_studies_over_dicom_come_back_as_valid_sr_sc_seg_matching_grpc(
    dicom_server: DicomServerFactory,
    shared_server: tuple[TriageServer, int],
    tiny_phantoms: Path,
    tmp_path: Path,
    log_buffer: io.StringIO,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Each eligible study gets one SR, one overlay per finding and one SEG at the destination,
    each passing dciodvfy, the SR reading back the findings and numbers the gRPC front door
    gives for the same bytes; patient data is copied, never logged."""
    require("storescu", "storescp", "dciodvfy")
    studies = _studies(tiny_phantoms, 3)
    rg1 = tmp_path / "rg1"
    rg1.mkdir()
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):  # uncompressed and JPEG 2000, own studies
        data = with_study_uid(pydicom_data.testdata(name).read_bytes(), pydicom.uid.generate_uid())
        (rg1 / name).write_bytes(data)
        studies[study_of(rg1 / name)] = [rg1 / name]
    expected = {uid: _grpc(shared_server[1], files) for uid, files in studies.items()}
    eligible = {uid: r for uid, r in expected.items() if r is not None}
    assert len(eligible) >= 3
    labels = len(next(iter(eligible.values())).findings)
    with storescp(tmp_path / "pacs") as pacs:
        _, port = dicom_server(**{"dicom.destinations": (destination(pacs.port),)})
        for files in studies.values():
            sent = storescu(port, files)
            assert sent.returncode == 0, sent.stdout + sent.stderr
        received = pacs.wait_for(len(eligible) * (labels + 2), timeout=120)
    by_study: dict[str, dict[str, list[pydicom.Dataset]]] = defaultdict(lambda: defaultdict(list))
    for path in received:
        assert dciodvfy_errors(path) == [], path.name
        ds = pydicom.dcmread(path)
        by_study[str(ds.StudyInstanceUID)][str(ds.Modality)].append(ds)
    assert set(by_study) == set(eligible)
    for uid, objects in by_study.items():
        reply = eligible[uid]
        assert (len(objects["SR"]), len(objects["OT"]), len(objects["SEG"])) == (1, labels, 1)
        source = pydicom.dcmread(io.BytesIO(_source_of(studies[uid], reply)))
        for ds in (*objects["SR"], *objects["OT"], *objects["SEG"]):
            assert ds.SOPInstanceUID != reply.sop_instance_uid
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID
            for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
                assert str(ds.get(key, "")) == str(source.get(key, "")), key
        report = read_report(objects["SR"][0])
        assert objects["SR"][0].VerificationFlag == "UNVERIFIED"
        assert report.source_sop_instance_uid == reply.sop_instance_uid
        assert report.algorithm_version == reply.model_version
        assert report.decision == triage_pb2.Decision.Name(reply.decision)
        assert report.reasons == tuple(triage_pb2.DeferReason.Name(r) for r in reply.defer_reasons)
        assert report.defer_cost == pytest.approx(reply.defer_cost, abs=1e-12)
        assert report.p_error == pytest.approx(reply.p_error, abs=TOLERANCE)
        assert [f.label for f in report.findings] == [f.label for f in reply.findings]
        for read, sent in zip(report.findings, reply.findings, strict=True):
            assert read.probability == pytest.approx(sent.probability, abs=TOLERANCE)
            assert read.threshold == pytest.approx(sent.threshold, abs=1e-12)
            assert read.present == sent.present
        seg = objects["SEG"][0]
        assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
        assert seg.SegmentationType == "FRACTIONAL" and len(seg.SegmentSequence) == labels
        maps = read_maps(seg)
        for k, finding in enumerate(reply.findings):
            cam = np.asarray(finding.heatmap.values, np.float32).reshape(
                finding.heatmap.height, finding.heatmap.width
            )
            want = relative_map(cam, int(source.Rows), int(source.Columns))
            np.testing.assert_allclose(maps[k], want, atol=0.5 / 255 + 1e-6)
    logs = log_buffer.getvalue() + "".join(capfd.readouterr())
    for value in _phi_values([p for files in studies.values() for p in files]):
        assert value not in logs
    studies_logged = [
        json.loads(line) for line in log_buffer.getvalue().splitlines() if '"dicom_study"' in line
    ]
    assert {line["outcome"] for line in studies_logged} <= {"NEW", "not_eligible"}


def _source_of(files: list[Path], reply: triage_pb2.TriageResult) -> bytes:
    for path in files:
        if str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) == (
            reply.sop_instance_uid
        ):
            return path.read_bytes()
    raise AssertionError("the chosen image is not among the study's files")
