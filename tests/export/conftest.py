"""Fixtures of the export tests: tiny runs (see ``export_runs``) and the bundle made from them."""

from __future__ import annotations

import pytest

from tests.export.export_runs import (
    Bundle,
    Runs,
    write_classifier_run,
    write_csv_dataset,
    write_error_run,
)
from triage_common.bundle_format import read_manifest
from triage_tools.cli import main


@pytest.fixture(name="runs", scope="session")
def fixture_runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A tiny classifier run, its dataset and an error-model run trained (nominally) on it."""
    root = tmp_path_factory.mktemp("runs")
    dataset = write_csv_dataset(root / "dataset")
    model = write_classifier_run(root / "classifier", dataset)
    write_error_run(root / "error", root / "classifier", model)
    return Runs(root / "classifier", root / "error", dataset)


@pytest.fixture(name="bundle", scope="session")
def fixture_bundle(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The bundle written by ``triage export onnx`` from the tiny runs (4 parity images)."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    argv = ["export", "onnx", "--classifier", str(runs.classifier)]
    argv += ["--error-model", str(runs.error_model), "--out", str(out), "--parity-images", "4"]
    assert main(argv) == 0
    return Bundle(out, read_manifest(out), runs)
