"""Hostile DICOM over gRPC: every call answered with a status and a reason, the server intact."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.triage.v1 import triage_pb2
from tests.fuzz import bombs
from tests.helpers.dicom_factory import chest
from tests.helpers.servers import ServerFactory, open_stub
from triage_common.logging import configure_logging

PANIC = Path(__file__).resolve().parents[2] / "fuzz" / "regressions"
PANIC_FILE = PANIC / "rle_panic_index_out_of_bounds.dcm"


@pytest.fixture(name="log_buffer")
def fixture_log_buffer() -> Iterator[io.StringIO]:
    """Routes the real JSON log configuration into a buffer for the duration of a test."""
    configure_logging("DEBUG", json_output=True)
    buffer = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    yield buffer
    configure_logging("INFO")


def _requests(buffer: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "triage_request"]


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=2
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize("in_process", [False, True], ids=["workers", "in-process"])
def test_a_codec_panic_is_invalid_argument_and_logged_as_sent(
    server_factory: ServerFactory, log_buffer: io.StringIO, in_process: bool
) -> None:
    """A PanicException (a BaseException) from the RLE decoder ends the call INVALID_ARGUMENT
    with the reason, the log line records that status, and the server keeps serving — whether
    the decode runs in a worker or, with decode.in_process, in the request thread."""
    _, port = server_factory(**{"decode.in_process": in_process})
    channel, stub = open_stub(port)
    with pytest.raises(grpc.RpcError) as info:
        stub.Triage(triage_pb2.TriageRequest(instances=[PANIC_FILE.read_bytes()]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PanicException" in str(info.value.details())
    assert stub.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=10).findings
    channel.close()
    assert _serving(port)
    logged = _requests(log_buffer)
    assert [r["status"] for r in logged] == ["INVALID_ARGUMENT", "OK"]
    assert logged[0]["error"] == "DecoderFailed"


def test_bombs_get_a_reason_within_two_seconds(server_factory: ServerFactory) -> None:
    """Each decompression bomb of the attack report is answered INVALID_ARGUMENT naming its
    limit within 2 s, and health stays SERVING."""
    _, port = server_factory()
    channel, stub = open_stub(port)
    cases = [
        bombs.rle_zeros(511, 65535),
        bombs.jpeg_declaring(255, 65535),
        bombs.jpeg_declaring(6000, 6000),
        bombs.jpegls_declaring(10000, 10000),
        bombs.deflate_bomb(300 << 20),
    ]
    for data in cases:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
        assert time.monotonic() - start < 2.0
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "(decode." in str(info.value.details())  # the limit is named
    channel.close()
    assert _serving(port)


def test_a_valid_deflated_image_is_triaged(server_factory: ServerFactory) -> None:
    """A Deflated Explicit VR chest CR gets a result (it used to be 'no pixel data')."""
    _, port = server_factory()
    channel, stub = open_stub(port)
    result = stub.Triage(triage_pb2.TriageRequest(instances=[bombs.deflated_chest()]), timeout=10)
    channel.close()
    assert result.findings and result.decision != triage_pb2.DECISION_UNSPECIFIED


FREE_TEXT = {
    "Modality": "QQMOD7781",
    "BodyPartExamined": "ZQXACC445566",
    "ViewPosition": "VWPOS99231",
    "PhotometricInterpretation": "PHOTO55123",
    "InstitutionName": "INSTNAME-88412",
    "StationName": "STATION-77120",
    "SeriesDescription": "SERIESDESC-66017",
    "StudyDescription": "STUDYDESC-55190",
}


def test_free_text_header_values_are_never_echoed(
    server_factory: ServerFactory, log_buffer: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    """Distinctive strings in every free-text-like attribute the decode path reads appear in
    no error message and no log line: a value is quoted only when it is a defined term. (A
    successful result may hand the sender's own site back to it; errors and logs never.)"""
    _, port = server_factory()
    channel, stub = open_stub(port)
    details = []
    for keyword, value in FREE_TEXT.items():
        data = chest(**{keyword: value})
        try:
            stub.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=10)
        except grpc.RpcError as exc:
            details.append(str(exc.details()))
    channel.close()
    captured = capfd.readouterr()
    everything = "\n".join(details) + log_buffer.getvalue() + captured.out + captured.err
    for value in FREE_TEXT.values():
        assert value not in everything
    assert "(BodyPartExamined withheld: not a defined term)" in "\n".join(details)


def test_interleaved_stream_chunks_are_refused_naming_the_instances(
    server_factory: ServerFactory,
) -> None:
    """Chunks of one instance resumed after another instance began are INVALID_ARGUMENT saying
    so (they used to surface as 'instance 1 has no StudyInstanceUID')."""
    _, port = server_factory()
    channel, stub = open_stub(port)
    first, second = chest(), chest()
    chunks = [
        triage_pb2.StudyChunk(instance=0, data=first[:1000]),
        triage_pb2.StudyChunk(instance=1, data=second),
        triage_pb2.StudyChunk(instance=0, data=first[1000:]),
    ]
    with pytest.raises(grpc.RpcError) as info:
        stub.TriageStream(iter(chunks), timeout=10)
    channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "instance 0 resumed after instance 1 began" in str(info.value.details())


def test_a_chunk_above_the_message_limit_is_invalid_argument(server_factory: ServerFactory) -> None:
    """One stream chunk larger than server.max_message_bytes is refused naming the limit (gRPC's
    own limit sits higher, so its RESOURCE_EXHAUSTED is not what a client meets)."""
    _, port = server_factory(**{"server.max_message_bytes": 64 * 1024})
    channel, stub = open_stub(port)
    data = chest()
    assert len(data) > 64 * 1024
    with pytest.raises(grpc.RpcError) as info:
        stub.TriageStream(iter([triage_pb2.StudyChunk(instance=0, data=data)]), timeout=10)
    channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "server.max_message_bytes = 65536" in str(info.value.details())
