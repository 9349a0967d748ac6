"""No patient data in logs, error messages or metrics, for accepted and rejected studies."""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
import structlog

from tests.helpers.dicom_factory import PHI, chest, without_pixels
from tests.helpers.servers import ServerFactory, open_stub
from triage_common.logging import configure_logging, hash_uid
from triage_tools.client import CallOptions, triage_study


@pytest.fixture(name="log_buffer")
def fixture_log_buffer() -> Iterator[io.StringIO]:
    """Routes the real JSON log configuration into a buffer for the duration of a test."""
    configure_logging("DEBUG", json_output=True)
    buffer = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    yield buffer
    configure_logging("INFO")


def test_no_phi_in_logs_errors_or_metrics(
    server_factory: ServerFactory, log_buffer: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    """PatientName, PatientID, PatientBirthDate and AccessionNumber never leave the request."""
    server, port = server_factory(**{"metrics.port": 0})
    channel, stub = open_stub(port)
    uid = "1.2.826.0.1.3680043.99.77"
    accepted = triage_study(stub, [chest(study_uid=uid)], CallOptions(include_overlay=True))
    # a malformed birth date is read leniently and must not be quoted anywhere either
    triage_study(stub, [chest(PatientBirthDate="1901-02-03x")], CallOptions())
    details: list[str] = []
    rejected = [
        [chest(Modality="CT")],  # FAILED_PRECONDITION
        [without_pixels(chest())],  # INVALID_ARGUMENT
        [chest(study_uid=uid), chest()],  # two studies
        [chest()[:3000]],  # truncated
    ]
    for instances in rejected:
        with pytest.raises(grpc.RpcError) as info:
            triage_study(stub, instances, CallOptions())
        details.append(str(info.value.details()))
    with pytest.raises(grpc.RpcError) as info:
        triage_study(stub, [chest()], CallOptions(defer_cost=7.0))
    details.append(str(info.value.details()))
    channel.close()
    captured = capfd.readouterr()
    logs = log_buffer.getvalue()
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "triage_request"]
    assert len(requests) == 2 + len(rejected) + 1
    assert any(r["study"] == hash_uid(uid) for r in requests)
    haystacks = [logs, captured.out, captured.err, *details, str(accepted.ignored_instances)]
    for text in haystacks:
        for value in (*PHI.values(), "Zyxwquux", "98765", "55555", "1901-02-03x", uid):
            assert value not in text
    ok = next(r for r in requests if r["status"] == "OK")
    assert set(ok["ms"]) >= {"decode", "preprocess", "queue", "inference", "total"}
    assert ok["decision"] in ("AUTO_REPORT", "DEFER")
    server.stop(0)


def test_metrics_endpoint_has_no_phi(server_factory: ServerFactory) -> None:
    """The Prometheus endpoint counts requests by status and decision, with no patient data."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    server, port = server_factory(**{"metrics.port": metrics_port})
    channel, stub = open_stub(port)
    triage_study(stub, [chest()], CallOptions())
    with pytest.raises(grpc.RpcError):
        triage_study(stub, [chest(Modality="MR")], CallOptions())
    channel.close()
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10
    ).read()
    body = text.decode()
    assert (
        'triage_requests_total{decision="",rpc="Triage",status="FAILED_PRECONDITION"} 1.0' in body
    )
    assert 'status="OK"' in body
    assert "triage_stage_seconds_bucket" in body and 'stage="inference"' in body
    assert "triage_batch_size_count" in body and "triage_queue_depth" in body
    for value in PHI.values():
        assert value not in body
