"""``grpc.health.v1`` as served: List answers without a traceback, and an unknown service in
Check is NOT_FOUND naming the services the server has."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.servers import FakeModel, ServerFactory, open_channel

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_list_answers_every_service_without_a_traceback(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Health/List returns each service with its status, and nothing is logged as an error."""
    _, port = server_factory(model=FakeModel())
    channel = open_channel(port)
    health = health_pb2_grpc.HealthStub(channel)
    with caplog.at_level(logging.WARNING):
        reply = health.List(health_pb2.HealthListRequest(), timeout=5)
    channel.close()
    statuses = {name: s.status for name, s in reply.statuses.items()}
    assert {"", "liveness", "readiness", "model", "triage.v1.Triage"} <= set(statuses)
    assert statuses["readiness"] == statuses["liveness"] == SERVING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_unknown_service_is_not_found_naming_the_known_ones(server_factory: ServerFactory) -> None:
    """Check of a service the server does not have says which ones it has."""
    _, port = server_factory(model=FakeModel())
    channel = open_channel(port)
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="bogus"), timeout=5
        )
    channel.close()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no health service 'bogus'" in info.value.details()
    assert "'readiness'" in info.value.details() and "'' (overall)" in info.value.details()
