"""A real Triton server for the KServe tests: the PyTriton environment, or a loud skip.

:func:`pytriton_python` creates (once, cached) or finds the PyTriton virtual environment of
:mod:`triage_tools.triton_local`. Only when it cannot be installed here do the tests skip, with a
reason that says so in capitals; a server that installs but does not start fails its test.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from triage_tools.triton_local import TritonUnavailable, ensure_venv

SKIP_REASON = (
    "NO REAL TRITON SERVER: the PyTriton environment (nvidia-pytriton 0.7.0, numpy<2, "
    "onnxruntime) could not be installed, so the KServe backend is NOT tested against Triton "
    "here: {why}"
)


def pytriton_python() -> Path:
    """The PyTriton environment's python; skips the test (loudly) when it cannot be installed."""
    try:
        return ensure_venv()
    except TritonUnavailable as exc:
        pytest.skip(SKIP_REASON.format(why=exc))


def health_status(port: int, service: str) -> int:
    """The server's ``grpc.health.v1`` status of ``service`` (UNKNOWN when it cannot answer)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)
        return int(reply.status)


def wait_for_status(port: int, service: str, status: int, timeout: float) -> float:
    """Seconds until ``service`` reports ``status``; AssertionError past ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if health_status(port, service) == status:
            return time.monotonic() - start
        time.sleep(0.05)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    raise AssertionError(f"{service!r} did not become {name} within {timeout} s")
