"""Fixtures of the service tests: a test bundle (built in a subprocess), servers, stubs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2_grpc

from service._proto.triage.v1 import triage_pb2_grpc
from service.config import ServiceConfig, load_config
from service.rpc.server import TriageServer, create_server

ServerFactory = Callable[..., tuple[TriageServer, int]]


def make_config(bundle: Path, **dotted: Any) -> ServiceConfig:
    """A configuration for ``bundle`` on a free loopback port with ``dotted`` overrides.

    The worklist is off unless a test sets ``worklist.path``: these tests resend one study
    (RG1) in several encodings and must see fresh inference, not the stored replay.
    """
    overrides: dict[str, Any] = {
        "bundle": str(bundle),
        "server.port": 0,
        "logging.level": "INFO",
        "worklist.path": "",
    }
    overrides.update(dotted)
    return load_config(None, env={}, overrides=overrides)


@pytest.fixture(name="server_factory")
def fixture_server_factory(bundle_path: Path) -> Iterator[ServerFactory]:
    """Starts servers (``factory(model=..., wait=True, **dotted)``); stops them afterwards."""
    started: list[TriageServer] = []

    def factory(*, model: Any = None, wait: bool = True, **dotted: Any) -> tuple[TriageServer, int]:
        server, port = create_server(make_config(bundle_path, **dotted), model=model)
        started.append(server)
        server.start(wait_ready=wait, timeout=60)
        return server, port

    yield factory
    for server in started:
        server.stop(0).wait(10)


@pytest.fixture(name="shared_server", scope="module")
def fixture_shared_server(bundle_path: Path) -> Iterator[tuple[TriageServer, int]]:
    """One real server (ONNX Runtime on the test bundle) per test module."""
    server, port = create_server(make_config(bundle_path, **{"server.max_in_flight": 64}))
    server.start(wait_ready=True, timeout=60)
    yield server, port
    server.stop(0).wait(10)


@pytest.fixture(name="channel")
def fixture_channel(shared_server: tuple[TriageServer, int]) -> Iterator[grpc.Channel]:
    """An insecure channel to the shared server."""
    _, port = shared_server
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 256 << 20)]
    )
    yield channel
    channel.close()


@pytest.fixture(name="stub")
def fixture_stub(channel: grpc.Channel) -> triage_pb2_grpc.TriageStub:
    """A Triage stub on the shared server."""
    return triage_pb2_grpc.TriageStub(channel)


@pytest.fixture(name="health_stub")
def fixture_health_stub(channel: grpc.Channel) -> health_pb2_grpc.HealthStub:
    """A health stub on the shared server."""
    return health_pb2_grpc.HealthStub(channel)


class FakeModel:
    """Model outputs of the right shapes; ``gate`` (if given) blocks every run until set."""

    def __init__(
        self, labels: int = 4, cam: tuple[int, int] = (2, 2), gate: threading.Event | None = None
    ) -> None:
        self.labels, self.cam, self.gate = labels, cam, gate
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Constant outputs (P(error) 0.1, OOD score 0), after waiting for the gate."""
        if self.gate is not None and batch.shape[0] and not self.gate.wait(30):
            raise TimeoutError("gate never opened")
        n = batch.shape[0]
        with self.lock:
            self.batches.append(n)
        return {
            "probabilities": np.full((n, self.labels), 0.25, np.float32),
            "cams": np.ones((n, self.labels, *self.cam), np.float32),
            "ood_score": np.zeros(n, np.float32),
            "p_error": np.full(n, 0.1, np.float32),
            "p_error_labels": np.full((n, self.labels), 0.05, np.float32),
        }


def open_stub(port: int) -> tuple[grpc.Channel, triage_pb2_grpc.TriageStub]:
    """A fresh channel and stub to ``port`` on loopback."""
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 256 << 20)]
    )
    return channel, triage_pb2_grpc.TriageStub(channel)
