"""``triage bench kserve`` runs both backends against a real local Triton and writes figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.triton import pytriton_python
from triage_tools.cli import main

pytestmark = pytest.mark.slow


def test_bench_kserve_smoke(bundle_path: Path, tmp_path: Path) -> None:
    """Every cell of both backends is answered without errors, and the backends agree."""
    pytriton_python()  # the real Triton's environment, or a loud skip
    out = tmp_path / "bench.json"
    argv = ["bench", "kserve", "--bundle", str(bundle_path), "--studies", "3"]
    argv += ["--concurrency", "1,2", "--rounds", "1", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    cells = {(c["backend"], c["concurrency"]): c for c in report["cells"]}
    assert set(cells) == {(b, c) for b in ("onnxruntime", "kserve") for c in (1, 2)}
    for cell in cells.values():
        assert cell["errors"] == 0 and cell["studies"] == 3
        assert cell["studies_per_s"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0
    assert report["max_p_error_gap"] <= 1e-5
    assert report["same_decisions"] == 3  # the studies compared: min(8, variants)
    assert report["triton"].startswith("local PyTriton Triton")


@pytest.mark.parametrize(
    ("extra", "named"), [(["--rounds", "0"], "--rounds"), (["--study", "nope.dcm"], "--study")]
)
def test_bench_kserve_refuses_bad_flags(
    bundle_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    """A bad flag is one line naming it, exit status 2."""
    assert main(["bench", "kserve", "--bundle", str(bundle_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err


def test_bench_kserve_refuses_a_folder_that_is_no_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--bundle naming a folder without a manifest is refused in one line."""
    assert main(["bench", "kserve", "--bundle", str(tmp_path)]) == 2
    assert "--bundle" in capsys.readouterr().err
