"""``triage bench explain``: triage measured with and without a worker in one run, the worker
really making counterfactuals meanwhile, bad options refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triage_tools.cli import main

pytestmark = pytest.mark.slow


def test_both_arrangements_measured_with_the_worker_working(
    bundle_path: Path, bundle_classifier: Path, tiny_autoencoder: Path, tmp_path: Path
) -> None:
    """A short run reports both arrangements and their ratio, and the worker finished jobs
    during the timed calls of its cell."""
    out = tmp_path / "bench.json"
    models = ["--bundle", str(bundle_path), "--classifier", str(bundle_classifier),
              "--autoencoder", str(tiny_autoencoder)]  # fmt: skip
    code = main(
        [
            "bench",
            "explain",
            *models,
            "--studies",
            "30",
            "--rounds",
            "1",
            "--backlog",
            "20",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    off, on = report["median"]["worker off"], report["median"]["worker on"]
    assert off["studies_per_s"] > 0 and on["studies_per_s"] > 0
    assert on["explanations_per_s"] > 0  # the worker was working while triage was timed
    ratio = on["studies_per_s"] / off["studies_per_s"]
    assert report["throughput_ratio_on_over_off"] == pytest.approx(ratio)


def test_bad_options_are_refused(
    bundle_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A zero count or a missing run folder exits 2 naming the flag."""
    base = ["bench", "explain", "--bundle", str(bundle_path), "--classifier", str(tmp_path / "x"),
            "--autoencoder", str(tmp_path / "y")]  # fmt: skip
    assert main([*base, "--studies", "0"]) == 2
    assert "--studies" in capsys.readouterr().err
    assert main(base) == 2
    assert "--classifier" in capsys.readouterr().err
