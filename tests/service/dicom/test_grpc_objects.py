"""gRPC clients get the result as DICOM objects too; a replay returns the stored ones."""

from __future__ import annotations

import io
import time
from pathlib import Path

import grpc
import pydicom
import pytest

from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc
from service.dicom.sr import read_report
from service.rpc.server import create_server
from tests.helpers.dcmtk import dciodvfy_errors, require, storescp
from tests.helpers.dicom_factory import chest
from tests.helpers.dicom_servers import destination
from tests.helpers.servers import make_config

pytestmark = pytest.mark.slow

OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def test_grpc_reply_carries_objects_and_a_replay_returns_the_stored_ones(
    bundle_path: Path, tmp_path: Path
) -> None:
    """``include_dicom_objects`` returns a valid SR (same numbers as the reply), one SC per
    finding and a SEG; the same study sent again replays the same SOP Instance UIDs, and the
    destination gets each object once (those of a study sent without the flag too); overlays
    not asked for stay out of the reply."""
    require("storescp", "dciodvfy")
    with storescp(tmp_path / "pacs") as pacs:
        config = make_config(
            bundle_path,
            **{
                "worklist.path": str(tmp_path / "worklist.db"),
                "dicom.destinations": (destination(pacs.port, sources=["grpc"]),),
                "dicom.send_backoff_seconds": 0.05,
                "dicom.keep_sent_objects": True,  # a replay after sending still finds them
            },
        )
        server, port = create_server(config)
        server.start(wait_ready=True, timeout=60)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
                stub = triage_pb2_grpc.TriageStub(channel)  # type: ignore[no-untyped-call]
                study = chest()
                request = triage_pb2.TriageRequest(instances=[study], include_dicom_objects=True)
                first = stub.Triage(request, timeout=60)
                again = stub.Triage(request, timeout=60)
                plain = stub.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=60)
            # both studies' objects go to the destination (it takes results from gRPC)
            received = pacs.wait_for(2 * len(first.dicom_objects), timeout=60)
            time.sleep(0.5)
            receipts = pacs.by_uid()
        finally:
            server.stop(0).wait(30)
    kinds = [o.kind for o in first.dicom_objects]
    assert kinds == ["SR", *["SC"] * len(first.findings), "SEG"]
    assert not first.replayed and again.replayed
    uids = [o.sop_instance_uid for o in first.dicom_objects]
    assert [o.sop_instance_uid for o in again.dicom_objects] == uids
    assert all(f.overlay_png == b"" for f in first.findings)
    assert not plain.dicom_objects
    assert set(uids) <= set(receipts) and set(receipts.values()) == {1}
    assert len(received) == 2 * len(uids)
    for obj in first.dicom_objects:
        ds = pydicom.dcmread(io.BytesIO(obj.data))
        assert str(ds.StudyInstanceUID) == first.study_instance_uid
        assert str(ds.SOPInstanceUID) == obj.sop_instance_uid
        assert str(ds.file_meta.TransferSyntaxUID) == obj.transfer_syntax_uid
    for path in received:
        assert dciodvfy_errors(path) == [], path.name
    report = read_report(pydicom.dcmread(io.BytesIO(first.dicom_objects[0].data)))
    assert report.priority == triage_pb2.Priority.Name(first.priority)
    assert [(f.label, f.present) for f in report.findings] == [
        (f.label, f.present) for f in first.findings
    ]
    for read, sent in zip(report.findings, first.findings, strict=True):
        assert read.probability == pytest.approx(sent.probability, abs=1e-12)
        assert read.p_error == pytest.approx(sent.p_error, abs=1e-12)
