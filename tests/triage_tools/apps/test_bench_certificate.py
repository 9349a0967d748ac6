"""``triage bench certificate``: policies certified on one set, their risk realised on another."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from triage_common.policy_format import Recalibration
from triage_tools.apps.bench_certificate import calibrate, realised
from triage_tools.calibration.calibrate import CalibrationSet
from triage_tools.cli import main


def _set(n: int, seed: int) -> CalibrationSet:
    """One finding; P(error) uniform, a study wrong with probability 0.4 * P(error); two sites,
    patients with two studies each."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    wrong = rng.uniform(size=n) < 0.4 * p
    prob = np.where(wrong, 0.9, 0.1)[:, None]  # predicted present exactly when wrong
    return CalibrationSet(
        labels=("A",),
        thresholds=np.array([0.5]),
        probabilities=prob,
        p_error_raw=p,
        ood_score=np.zeros(n),
        truth=np.zeros((n, 1)),
        sites=tuple("north" if i % 2 else "south" for i in range(n)),
        source="sim",
        patient_ids=tuple(f"p{seed}-{i // 2}" for i in range(n)),
    )


def test_realised_risk_is_the_error_rate_of_what_the_policy_keeps() -> None:
    """On the test set the policy keeps P(error) <= cost (not OOD): its realised risk and
    deferral are those of exactly these studies, overall and per site."""
    test = _set(400, 1)
    out = realised(test, 0.5, Recalibration("identity"), 1.0)
    keep = test.p_error_raw <= 0.5
    assert out["all"]["auto_reported"] == int(keep.sum())
    assert out["all"]["risk"] == pytest.approx(float(test.wrong[keep].mean()), rel=1e-12)
    assert set(out) == {"all", "north", "south"}


def test_every_procedure_certifies_a_cost_under_the_target_on_a_large_set() -> None:
    """With 4,000 studies all three procedures certify 0.15 (true risk 0.2 * cost, so any cost
    up to 0.75), and their costs keep the true risk under the target."""
    cal = _set(4000, 2)
    for procedure in ("today", "cluster", "per-site"):
        chosen = calibrate(cal, procedure, 0.15, 0.1, 1.0)
        assert chosen is not None, procedure
        cost, recal = chosen
        kept = np.linspace(0, 1, 100001)
        tau = float(kept[recal(kept) <= cost].max())
        assert 0.2 * tau <= 0.15 + 1e-9, procedure


def test_bench_runs_pairs_end_to_end(
    phantom_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One pair of tiny sets: synthesised, run through the served model, certified (or
    refused) per procedure and target, written to results.json and tabled."""
    argv = ["bench", "certificate", "--bundle", str(phantom_bundle), "--out", str(tmp_path)]
    argv += ["--pairs", "1", "--calibration-studies", "30", "--test-studies", "30"]
    argv += ["--size", "64", "--workers", "1", "--target-risk", "0.9"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["procedure"] for r in results["rows"]} == {"today", "cluster", "per-site"}
    for row in results["rows"]:
        if row["certified"]:
            assert 0.0 <= row["cost"] <= 1.0 and math.isfinite(row["test"]["all"]["deferral"])
    assert (tmp_path / "sets" / "cal-20000" / "labels.csv").exists()
    assert "realised auto-report risk" in capsys.readouterr().out
