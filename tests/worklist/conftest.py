"""Fixtures of the worklist service tests: a test bundle and servers with a real store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import load_config
from service.server import TriageServer, create_server
from tests.bundle_factory import build_bundle_subprocess

WorklistServerFactory = Callable[..., tuple[TriageServer, int]]


@pytest.fixture(name="worklist_bundle", scope="session")
def fixture_worklist_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact random-init 64 px bundle exported by ``triage export onnx``."""
    return build_bundle_subprocess(tmp_path_factory.mktemp("worklist-bundle") / "bundle")


@pytest.fixture(name="worklist_server")
def fixture_worklist_server(
    worklist_bundle: Path, tmp_path: Path
) -> Iterator[WorklistServerFactory]:
    """Starts servers on one worklist file in tmp_path (``factory(**dotted)``); stops them."""
    started: list[TriageServer] = []

    def factory(**dotted: Any) -> tuple[TriageServer, int]:
        overrides: dict[str, Any] = {
            "bundle": str(worklist_bundle),
            "server.port": 0,
            "worklist.path": str(tmp_path / "worklist.db"),
        }
        overrides.update(dotted)
        server, port = create_server(load_config(None, env={}, overrides=overrides))
        started.append(server)
        server.start(wait_ready=True, timeout=60)
        return server, port

    yield factory
    for server in started:
        server.stop(0).wait(10)
