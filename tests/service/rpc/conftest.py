"""Fixtures of the gRPC tests: servers started per test, and stubs on the shared server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from service._proto.triage.v1 import triage_pb2_grpc
from service.rpc.server import TriageServer, create_server
from tests.helpers.servers import ServerFactory, make_config, open_channel


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


@pytest.fixture(name="channel")
def fixture_channel(shared_server: tuple[TriageServer, int]) -> Iterator[grpc.Channel]:
    """An insecure channel to the shared server."""
    _, port = shared_server
    channel = open_channel(port)
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
