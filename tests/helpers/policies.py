"""Calibrated policy files for the policy-file and policy-source tests."""

from __future__ import annotations

from triage_common.policy_format import CalibratedPolicy
from triage_tools.calibration.recalibrate import fit_isotonic


def make_policy(bundle_id: str, cost: float = 0.3) -> CalibratedPolicy:
    """A policy with an isotonic map, an operating point and a data summary."""
    recal = fit_isotonic([0.1, 0.2, 0.3, 0.6, 0.9], [0, 0, 1, 0, 1])
    return CalibratedPolicy(
        bundle_id=bundle_id,
        defer_cost=cost,
        recalibration=recal,
        ood_threshold=12.5,
        created="2026-01-01T00:00:00Z",
        selection={"method": "explicit"},
        operating_point={"defer_cost": cost, "deferral_rate": 0.4, "auto_error_rate": None},
        data={"studies": 5, "sites": {"a": 5}},
        metrics={"ece_before": 0.1, "ece_after": 0.05},
    )
