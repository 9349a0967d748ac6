"""``triage serve`` as a real process: torch-free, drains on SIGTERM, no PHI on stderr."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service._proto.triage.v1 import triage_pb2
from tests.service.conftest import open_stub
from tests.service.dicom_factory import PHI, chest
from triage_tools.client import chunks
from triage_tools.serve_process import ServeProcess

pytestmark = pytest.mark.slow


def _slow_stream(
    data: bytes, sent_first: threading.Event, release: threading.Event
) -> Iterator[triage_pb2.StudyChunk]:
    for i, chunk in enumerate(chunks([data], chunk_bytes=len(data) // 3 + 1)):
        yield chunk
        if i == 0:
            sent_first.set()
            release.wait(10)


def test_serve_subprocess_torch_free_and_drains(bundle_path: Path, tmp_path: Path) -> None:
    """The server process never imports torch, serves, and finishes a call in flight on SIGTERM."""
    server = ServeProcess(
        [
            *("--bundle", str(bundle_path)),
            *("--set", "server.shutdown_grace_seconds=20"),
            *("--set", f"worklist.path={tmp_path / 'worklist.db'}"),
        ]
    )
    try:
        server.wait_ready(60)
        channel, stub = open_stub(server.port)
        first = stub.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
        assert first.model_version
        odd = chest(PatientBirthDate="1901-02-03x", PatientName="Zyxwquux^Patient\\x")
        assert stub.Triage(triage_pb2.TriageRequest(instances=[odd]), timeout=30).model_version
        sent_first, release = threading.Event(), threading.Event()
        outcome: list[object] = []

        def in_flight() -> None:
            try:
                outcome.append(
                    stub.TriageStream(_slow_stream(chest(), sent_first, release), timeout=60)
                )
            except grpc.RpcError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=in_flight)
        caller.start()
        assert sent_first.wait(10)
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        release.set()
        caller.join(30)
        channel.close()
        assert server.wait(30) == 0
    finally:
        if server.proc.poll() is None:
            server.kill()
    lines = server.lines
    assert isinstance(outcome[0], triage_pb2.TriageResult), outcome
    events = [json.loads(line) for line in lines if line.startswith("{")]
    by_name = {e["event"]: e for e in events}
    for name in ("listening", "ready", "stopped"):
        assert by_name[name]["torch_loaded"] is False
    assert "signal" in by_name and "draining" in by_name
    text = "".join(lines)
    for value in (*PHI.values(), "Zyxwquux", "1901-02-03x"):
        assert value not in text
