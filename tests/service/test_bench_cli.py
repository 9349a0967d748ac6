"""``triage bench serve`` runs end to end with small counts and writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main

pytestmark = pytest.mark.slow


def test_bench_serve_smoke(bundle_path: Path, tmp_path: Path) -> None:
    """Two studies per cell at concurrency 1 and 2 for both encodings, beside model-only speed."""
    out = tmp_path / "bench.json"
    argv = ["bench", "serve", "--bundle", str(bundle_path), "--studies", "2"]
    argv += ["--concurrency", "1,2", "--model-seconds", "0.2", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    cells = {(c["kind"], c["concurrency"]): c for c in report["cells"]}
    assert set(cells) == {(k, c) for k in ("uncompressed", "jpeg2000") for c in (1, 2)}
    for cell in cells.values():
        assert cell["errors"] == 0 and cell["studies"] == 2
        assert cell["studies_per_s"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0
        assert cell["ratio_to_model"] > 0
    assert report["model_only_images_per_s"]["mean"] > 0
