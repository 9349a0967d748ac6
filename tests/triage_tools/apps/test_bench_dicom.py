"""``triage bench dicom`` runs both front doors end to end with small counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.dcmtk import require
from triage_tools.cli import main

pytestmark = pytest.mark.slow


def test_bench_dicom_times_both_front_doors_to_a_destination(
    bundle_path: Path, tmp_path: Path
) -> None:
    """Every study of both front doors is committed and its objects reach the storescp."""
    require("storescp")
    out = tmp_path / "bench.json"
    argv = ["bench", "dicom", "--bundle", str(bundle_path), "--studies", "2"]
    argv += ["--concurrency", "2", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["objects_per_study"] == 6  # SR + one SC per finding (4) + SEG
    rows = {r["front_door"]: r for r in report["rows"]}
    assert set(rows) == {"DICOM C-STORE", "gRPC TriageStream"}
    for row in rows.values():
        assert row["studies"] == 2
        assert row["committed_studies_per_s"] >= row["at_destination_studies_per_s"] > 0


def test_bench_dicom_refuses_a_missing_bundle(tmp_path: Path) -> None:
    """A --bundle that is no folder is one line and exit status 2."""
    assert main(["bench", "dicom", "--bundle", str(tmp_path / "nope")]) == 2
