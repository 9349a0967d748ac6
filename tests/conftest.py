"""Fixtures shared by several suites: real DICOM files, test bundles, phantoms and servers.

The helpers behind them are plain modules under ``tests/helpers``; tests import those, never
this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.rpc.server import TriageServer, create_server
from tests.helpers import pydicom_data
from tests.helpers.bundle_factory import NEVER_FLAGGING_OOD_THRESHOLD, build_bundle_subprocess
from tests.helpers.postgres import PostgresServer, postgres_missing
from tests.helpers.servers import WorklistServerFactory, make_config
from tests.helpers.worklist_stores import BACKENDS, StoreFactory


@pytest.fixture(name="rg1_paths")
def fixture_rg1_paths() -> dict[str, Path]:
    """The real RG1 chest CR in its four encodings."""
    return pydicom_data.rg1_paths()


@pytest.fixture(name="bundle_path", scope="session")
def fixture_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact random-init 64 px bundle exported by ``triage export onnx`` (torch stays out).

    Built once per session and shared read-only by the service, worklist, tools and Dockerfile
    tests.
    """
    return build_bundle_subprocess(tmp_path_factory.mktemp("test-bundle") / "bundle")


@pytest.fixture(name="tiny_phantoms", scope="session")
def fixture_tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 phantom studies at 64 px (mixed transfer syntaxes, some laterals), with masks."""
    from models.phantoms.generate import SynthConfig, synthesize
    from models.phantoms.scenario import load_scenario

    out = tmp_path_factory.mktemp("calibration-phantoms") / "data"
    synthesize(
        SynthConfig(
            out=out,
            studies=40,
            seed=3,
            scenario=load_scenario("confounded"),
            scenario_source="confounded",
            size=64,
            syntax="mixed",
        )
    )
    return out


@pytest.fixture(name="phantom_bundle", scope="session")
def fixture_phantom_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_phantoms: Path) -> Path:
    """A random-init 64 px bundle whose runs name the tiny phantom set (built in a subprocess).

    Its OOD guard never flags the phantoms (the guard is tested elsewhere), so calibration and
    policy tests see every study.
    """
    out = tmp_path_factory.mktemp("calibration-bundle") / "bundle"
    return build_bundle_subprocess(
        out, data=tiny_phantoms, ood_threshold=NEVER_FLAGGING_OOD_THRESHOLD
    )


@pytest.fixture(name="shared_server", scope="module")
def fixture_shared_server(bundle_path: Path) -> Iterator[tuple[TriageServer, int]]:
    """One real server (ONNX Runtime on the test bundle) per test module."""
    server, port = create_server(make_config(bundle_path, **{"server.max_in_flight": 64}))
    server.start(wait_ready=True, timeout=60)
    yield server, port
    server.stop(0).wait(10)


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


@pytest.fixture(name="postgres", scope="session")
def fixture_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 15 on loopback for the session (skipped, loudly, only when the
    server binaries are not installed)."""
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(name="postgres_url")
def fixture_postgres_url(postgres: PostgresServer) -> str:
    """The URL of a fresh empty database on the session's PostgreSQL."""
    return postgres.new_database()


@pytest.fixture(name="store_factory", params=BACKENDS)
def fixture_store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Worklist stores on one fresh database, once per backend (SQLite, PostgreSQL)."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        factory = StoreFactory("postgres", url=url)
    else:
        factory = StoreFactory("sqlite", path=tmp_path / "worklist.db")
    yield factory
    factory.close_all()
