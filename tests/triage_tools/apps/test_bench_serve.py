"""``triage bench serve`` runs end to end with small counts and writes its figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from triage_tools.cli import main

pytestmark = pytest.mark.slow


def test_bench_serve_smoke(bundle_path: Path, tmp_path: Path) -> None:
    """A real server process answers every cell; the ratio is against the faster model-only run."""
    out = tmp_path / "bench.json"
    argv = ["bench", "serve", "--bundle", str(bundle_path), "--studies", "2"]
    argv += ["--concurrency", "1,2", "--model-seconds", "0.1", "--rounds", "2"]
    argv += ["--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    cells = {(c["kind"], c["concurrency"]): c for c in report["cells"]}
    assert set(cells) == {(k, c) for k in ("uncompressed", "jpeg2000") for c in (1, 2)}
    for cell in cells.values():
        assert cell["errors"] == 0 and cell["studies"] == 4  # 2 rounds of 2
        assert cell["studies_per_s"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0
        assert 0 < cell["ratio_low"] <= cell["ratio_to_model"] <= cell["ratio_high"]
        expected = cell["studies_per_s"] / cell["model_only_per_s"]
        assert cell["ratio_to_model"] == pytest.approx(expected, rel=1e-9)
        assert cell["client_cpu_ms_per_study"] > 0
        if sys.platform.startswith("linux"):
            assert cell["server_cpu_ms_per_study"] > 0
    assert set(report["model_only_arrangements"]) == {"server", "one batch at a time"}
    assert report["server_exit_status"] == 0
