"""``triage health``: SERVING exits 0; an unknown service is a one-line refusal naming it."""

from __future__ import annotations

import pytest

from service.rpc.server import TriageServer
from triage_tools.cli import main


def test_health_of_a_known_and_an_unknown_service(
    shared_server: tuple[TriageServer, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """readiness prints SERVING (exit 0); --service bogus exits 2 listing the known services."""
    _, port = shared_server
    server = ["health", "--server", f"127.0.0.1:{port}"]
    assert main([*server, "--service", "readiness"]) == 0
    assert capsys.readouterr().out.strip() == "readiness: SERVING"
    assert main([*server, "--service", "bogus"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("triage health: --service 'bogus': no health service 'bogus'")
    assert "'readiness'" in line and "'liveness'" in line
