"""Fixtures of the DICOM tests: in-process servers with the Storage SCP, captured logs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from service.rpc.server import TriageServer, create_server
from tests.helpers.dcmtk import free_port
from tests.helpers.dicom_servers import DicomServerFactory, dicom_overrides
from tests.helpers.servers import make_config
from triage_common.logging import configure_logging


@pytest.fixture(name="dicom_server")
def fixture_dicom_server(bundle_path: Path, tmp_path: Path) -> Iterator[DicomServerFactory]:
    """Starts servers with the SCP on a free port (``factory(**dotted)``); stops them."""
    started: list[TriageServer] = []

    def factory(**dotted: Any) -> tuple[TriageServer, int]:
        overrides = {**dicom_overrides(tmp_path, free_port()), **dotted}
        server, _ = create_server(make_config(bundle_path, **overrides))
        started.append(server)
        server.start(wait_ready=True, timeout=60)
        assert server.dicom is not None
        return server, server.dicom.port

    yield factory
    for server in started:
        server.stop(0).wait(30)


@pytest.fixture(name="log_buffer")
def fixture_log_buffer() -> Iterator[io.StringIO]:
    """Routes the real JSON log configuration into a buffer for the duration of a test."""
    configure_logging("DEBUG", json_output=True)
    buffer = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    yield buffer
    configure_logging("INFO")
