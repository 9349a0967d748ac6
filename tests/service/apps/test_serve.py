"""``triage serve`` as a real process: torch-free, drains on SIGTERM, no PHI on stderr; with
``--policy``, SIGHUP swaps the calibrated policy under load, losing no call."""

from __future__ import annotations

import csv
import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pydicom
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydicom.uid import generate_uid

from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc
from service.bundle import load_bundle
from tests.helpers.dicom_factory import PHI, chest
from tests.helpers.servers import open_stub
from triage_common.policy_format import CalibratedPolicy, Recalibration, write_policy
from triage_tools.client import chunks
from triage_tools.serve_process import ServeProcess

pytestmark = pytest.mark.slow

#: Concurrent clients of the SIGHUP test.
CLIENTS = 8


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


@dataclass(frozen=True)
class Call:
    """One completed call of a client: when it was sent and answered, and its policy id."""

    sent: float
    answered: float
    version: str


def _policy(bundle_id: str, cost: float) -> CalibratedPolicy:
    return CalibratedPolicy(
        bundle_id=bundle_id,
        defer_cost=cost,
        recalibration=Recalibration("platt", a=1.0, b=-0.1),
        ood_threshold=1e6,
        created="2026-01-01T00:00:00Z",
        selection={"method": "explicit"},
    )


def fresh_study(template: bytes) -> bytes:
    """``template`` with new study, series and SOP instance UIDs (no idempotent replay)."""
    ds = pydicom.dcmread(io.BytesIO(template))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _wait_until(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise TimeoutError("condition not met in time")


def test_sighup_reload_under_load_loses_no_request(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path
) -> None:
    """8 clients submit continuously while the policy file is replaced and SIGHUP sent twice
    (then once more with a broken file): no call fails, and every call sent after a new policy
    was first seen carries its policy_version (the broken file keeps the last good one)."""
    bundle_id = load_bundle(phantom_bundle).bundle_id
    policies = [_policy(bundle_id, cost) for cost in (0.3, 0.5, 0.7)]
    versions = [p.policy_id for p in policies]
    path = tmp_path / "policy.json"
    write_policy(path, policies[0])
    with (tiny_phantoms / "labels.csv").open(newline="") as fh:
        first = next(r for r in csv.DictReader(fh) if r["view"] == "PA")
    study = (tiny_phantoms / first["path"]).read_bytes()
    server = ServeProcess(
        [
            *("--bundle", str(phantom_bundle), "--policy", str(path)),
            *("--set", f"worklist.path={tmp_path / 'worklist.db'}"),
            *("--set", "inference.warmup_runs=0", "--set", "server.shutdown_grace_seconds=5"),
        ],
        env={"OMP_WAIT_POLICY": "PASSIVE"},
    )
    calls: list[list[Call]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    stop = threading.Event()
    try:
        channel = grpc.insecure_channel(server.address)
        health = health_pb2_grpc.HealthStub(channel)
        _wait_until(
            lambda: (
                health.Check(health_pb2.HealthCheckRequest(service="readiness")).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        )
        stub = triage_pb2_grpc.TriageStub(channel)

        def client(k: int) -> None:
            while not stop.is_set():
                request = triage_pb2.TriageRequest(instances=[fresh_study(study)])
                sent = time.monotonic()
                try:
                    result = stub.Triage(request, timeout=30)
                except grpc.RpcError as exc:
                    errors.append(exc)
                    return
                assert not result.replayed
                calls[k].append(Call(sent, time.monotonic(), result.policy_version))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        _wait_until(lambda: sum(map(len, calls)) >= 4 * CLIENTS)
        first_seen: list[float] = []
        for policy, version in zip(policies[1:], versions[1:], strict=True):
            write_policy(path, policy)
            server.proc.send_signal(signal.SIGHUP)
            _wait_until(lambda v=version: any(c.version == v for cs in calls for c in cs))
            first_seen.append(min(c.answered for cs in calls for c in cs if c.version == version))
            _wait_until(lambda t=first_seen[-1]: sum(c.sent > t for cs in calls for c in cs) >= 16)
        path.write_text("{ broken")
        server.proc.send_signal(signal.SIGHUP)
        _wait_until(lambda: server.count("policy_reload_failed") == 1)
        after_broken = time.monotonic()
        _wait_until(lambda: sum(c.sent > after_broken for cs in calls for c in cs) >= 16)
        stop.set()
        for t in threads:
            t.join(30)
        channel.close()
    finally:
        stop.set()
        server.proc.send_signal(signal.SIGTERM)
        code = server.wait(30)
    assert not errors, errors[:3]
    assert code == 0
    assert server.count("policy_reloaded") == 2
    order = {v: i for i, v in enumerate(versions)}
    for client_calls in calls:
        seen = [order[c.version] for c in client_calls]
        assert seen == sorted(seen)  # a client never goes back to an older policy
    for i, seen_at in enumerate(first_seen):
        later = [c.version for cs in calls for c in cs if c.sent > seen_at]
        expected = set(versions[i + 1 :])
        assert later and set(later) <= expected
    assert {c.version for cs in calls for c in cs if c.sent > after_broken} == {versions[2]}
    assert sum(map(len, calls)) > 6 * 16
