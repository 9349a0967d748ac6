"""``triage bench model`` on the compact network: the three paths, ratios and the JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triage_tools.cli import main


def test_bench_model_reports_three_paths_and_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A one-iteration run at 64 px prints the table and writes images/s and both ratios."""
    out = tmp_path / "bench.json"
    argv = ["bench", "model", "--config", "compact", "--size", "64", "--iterations", "1"]
    assert main([*argv, "--warmup", "0", "--batch-sizes", "1", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"bundle", "plain_onnx", "eager_gradcam"}
    for path in result["results"].values():
        assert set(path) == {"1", "2"} and all(v["images_per_s"] > 0 for v in path.values())
    assert set(result["ratios"]) == {"bundle/plain_onnx", "bundle/eager_gradcam"}
    assert result["onnxruntime_allow_spinning"] is False
    printed = capsys.readouterr().out
    assert "ratio bundle/plain_onnx" in printed and "batch 2 img/s" in printed
