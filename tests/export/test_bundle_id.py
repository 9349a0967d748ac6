"""The bundle id comes from content only: the same runs exported twice, at different times, get
the same id, and a policy calibrated for one export is served by the other."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import export.bundle
from service.bundle import load_bundle
from tests.export.export_runs import Bundle, Runs
from tests.helpers.policies import make_policy
from triage_common.bundle_format import MANIFEST, compute_bundle_id, read_manifest
from triage_common.policy_format import read_policy, write_policy
from triage_tools.cli import main


def _export(runs: Runs, out: Path) -> dict[str, object]:
    argv = ["export", "onnx", "--classifier", str(runs.classifier)]
    argv += ["--error-model", str(runs.error_model), "--out", str(out), "--parity-images", "2"]
    assert main(argv) == 0
    return read_manifest(out)


def test_same_runs_exported_twice_get_the_same_id(
    runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exports a day apart: equal ids, the times kept in provenance, a policy for either."""
    times: Iterator[str] = iter(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"])
    monkeypatch.setattr(export.bundle, "utc_now", lambda: next(times))
    first = _export(runs, tmp_path / "first")
    second = _export(runs, tmp_path / "second")
    assert first["bundle_id"] == second["bundle_id"]
    assert first["files"] == second["files"]  # byte-identical ONNX
    provenance = [m["provenance"] for m in (first, second)]
    assert [p["created"] for p in provenance] == [  # type: ignore[index]
        "2026-01-01T00:00:00Z",
        "2026-01-02T00:00:00Z",
    ]
    policy = tmp_path / "policy.json"
    write_policy(policy, make_policy(load_bundle(tmp_path / "first").bundle_id))
    assert read_policy(policy, load_bundle(tmp_path / "second").bundle_id).defer_cost == 0.3


def test_the_id_covers_what_decides_and_not_provenance(bundle: Bundle, tmp_path: Path) -> None:
    """Changing a decision field changes the id; editing provenance or parity does not."""
    manifest = bundle.manifest
    base = compute_bundle_id(manifest)
    assert compute_bundle_id({**manifest, "provenance": {"created": "another time"}}) == base
    assert compute_bundle_id({**manifest, "parity": {}}) == base
    thresholds = dict(manifest["thresholds"], Edema=0.9)
    assert compute_bundle_id({**manifest, "thresholds": thresholds}) != base
    assert compute_bundle_id({**manifest, "defer_cost": 0.3}) != base
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    edited = {**manifest, "provenance": {**manifest["provenance"], "note": "re-documented"}}
    (copy / MANIFEST).write_text(json.dumps(edited))
    assert read_manifest(copy)["bundle_id"] == base


def test_a_format_1_manifest_still_reads(bundle: Bundle, tmp_path: Path) -> None:
    """A bundle of the first format, its id over the whole manifest, is still accepted."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    old = {k: v for k, v in bundle.manifest.items() if k != "bundle_id"}
    old["format"] = "cxr-triage/bundle/1"
    old["bundle_id"] = compute_bundle_id(old)
    (copy / MANIFEST).write_text(json.dumps(old))
    assert read_manifest(copy)["bundle_id"] == old["bundle_id"]
