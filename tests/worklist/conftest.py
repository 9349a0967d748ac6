"""Fixtures of the worklist service tests: servers with a real store (the bundle is shared)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.rpc.server import TriageServer, create_server
from tests.service.conftest import make_config

WorklistServerFactory = Callable[..., tuple[TriageServer, int]]


@pytest.fixture(name="worklist_server")
def fixture_worklist_server(bundle_path: Path, tmp_path: Path) -> Iterator[WorklistServerFactory]:
    """Starts servers on one worklist file in tmp_path (``factory(**dotted)``); stops them."""
    started: list[TriageServer] = []

    def factory(**dotted: Any) -> tuple[TriageServer, int]:
        overrides: dict[str, Any] = {"worklist.path": str(tmp_path / "worklist.db"), **dotted}
        server, port = create_server(make_config(bundle_path, **overrides))
        started.append(server)
        server.start(wait_ready=True, timeout=60)
        return server, port

    yield factory
    for server in started:
        server.stop(0).wait(10)
