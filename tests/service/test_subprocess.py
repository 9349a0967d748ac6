"""``triage serve`` as a real process: torch-free, drains on SIGTERM, no PHI on stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.triage.v1 import triage_pb2
from service.client import chunks
from tests.bundle_factory import ROOT
from tests.service.conftest import open_stub
from tests.service.dicom_factory import PHI, chest

pytestmark = pytest.mark.slow


def _wait_for_port(proc: subprocess.Popen[str], lines: list[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            if "listening on" in line:
                return int(line.rsplit(":", 1)[1])
        if proc.poll() is not None:
            raise AssertionError("server exited early:\n" + "".join(lines))
        time.sleep(0.05)
    raise AssertionError("server did not report its port:\n" + "".join(lines))


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "service.serve_cli", "--bundle", str(bundle_path), "--port", "0"]
    cmd += ["--set", "server.shutdown_grace_seconds=20"]
    cmd += ["--set", f"worklist.path={tmp_path / 'worklist.db'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        port = _wait_for_port(proc, lines, 60)
        channel, stub = open_stub(port)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            reply = health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
            if (
                reply.status == health_pb2.HealthCheckResponse.SERVING
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
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
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        release.set()
        caller.join(30)
        channel.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
    assert isinstance(outcome[0], triage_pb2.TriageResult), outcome
    events = [json.loads(line) for line in lines if line.startswith("{")]
    by_name = {e["event"]: e for e in events}
    for name in ("listening", "ready", "stopped"):
        assert by_name[name]["torch_loaded"] is False
    assert "signal" in by_name and "draining" in by_name
    text = "".join(lines)
    for value in (*PHI.values(), "Zyxwquux", "1901-02-03x"):
        assert value not in text
