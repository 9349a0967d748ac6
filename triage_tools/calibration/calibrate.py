"""Calibrating the defer cost on a labelled set of served-model outputs.

Input is a :class:`CalibrationSet` (plain arrays: probabilities, raw P(error), OOD score,
labels), built either by running the served ONNX pipeline over images or from a worklist export
of radiologists' final reads. Steps: recalibrate P(error) (isotonic or Platt by held-out log
loss); sweep a grid of defer costs; pick the cost by one of three rules; write the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from triage_common.metrics import study_errors
from triage_common.policy_format import Recalibration
from triage_tools.calibration.recalibrate import (
    brier,
    choose_recalibration,
    expected_calibration_error,
)
from triage_tools.calibration.risk_control import certify_cost

F64 = npt.NDArray[np.float64]
DEFAULT_GRID = tuple(float(c) for c in np.round(np.linspace(0.0, 1.0, 201), 3))


@dataclass(frozen=True)
class CalibrationSet:
    """Served-model outputs and ground truth for N studies."""

    labels: tuple[str, ...]
    thresholds: F64  # (L,)
    probabilities: F64  # (N, L)
    p_error_raw: F64  # (N,)
    ood_score: F64  # (N,)
    truth: F64  # (N, L), NaN where unknown
    sites: tuple[str, ...]
    source: str
    # Optional (evaluation): the unit of the bootstrap, the image for mask look-ups, the maps.
    patient_ids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()
    cams: npt.NDArray[np.float32] | None = None  # (N, L, h, w)

    def __post_init__(self) -> None:
        n = len(self.p_error_raw)
        shapes_ok = (
            self.probabilities.shape == (n, len(self.labels))
            and self.truth.shape == (n, len(self.labels))
            and self.ood_score.shape == (n,)
            and len(self.sites) == n
            and len(self.patient_ids) in (0, n)
            and len(self.sop_uids) in (0, n)
            and (self.cams is None or self.cams.shape[:2] == (n, len(self.labels)))
        )
        if not shapes_ok:
            raise ValueError("calibration set arrays disagree in shape")

    def __len__(self) -> int:
        return len(self.p_error_raw)

    def subset(self, index: npt.ArrayLike) -> CalibrationSet:
        """Rows ``index`` (integer positions, repeats allowed, or a boolean mask), in order."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)

        def pick(values: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(values[i] for i in idx) if values else ()

        return replace(
            self,
            probabilities=self.probabilities[idx],
            p_error_raw=self.p_error_raw[idx],
            ood_score=self.ood_score[idx],
            truth=self.truth[idx],
            sites=pick(self.sites),
            patient_ids=pick(self.patient_ids),
            sop_uids=pick(self.sop_uids),
            cams=None if self.cams is None else self.cams[idx],
        )

    @property
    def wrong(self) -> F64:
        """1 where the thresholded prediction of any known label is wrong."""
        return study_errors(self.truth, self.probabilities, self.thresholds)


def sweep(
    cal: CalibrationSet,
    p_error: F64,
    ood_threshold: float,
    grid: Sequence[float] = DEFAULT_GRID,
) -> list[dict[str, Any]]:
    """One row per cost: deferral rate, auto-report error rate, per-finding sensitivity and
    specificity among auto-reported studies, and the expected cost per study."""
    wrong = cal.wrong
    eligible = cal.ood_score <= ood_threshold
    n = len(wrong)
    present = cal.probabilities >= cal.thresholds[None, :]
    rows = []
    for cost in grid:
        auto = eligible & (p_error <= cost)
        kept = int(auto.sum())
        row: dict[str, Any] = {
            "defer_cost": float(cost),
            "deferral_rate": 1.0 - kept / n,
            "auto_reported": kept,
            "auto_error_rate": float(wrong[auto].mean()) if kept else float("nan"),
            "expected_cost": float(wrong[auto].sum() / n + cost * (n - kept) / n),
        }
        for j, label in enumerate(cal.labels):
            y, p = cal.truth[auto, j], present[auto, j]
            pos, neg = y == 1, y == 0
            row[f"sensitivity/{label}"] = float(p[pos].mean()) if pos.any() else float("nan")
            row[f"specificity/{label}"] = float((~p[neg]).mean()) if neg.any() else float("nan")
        rows.append(row)
    return rows


def calibration_metrics(p_before: F64, p_after: F64, wrong: F64) -> dict[str, float]:
    """ECE (15 bins) and Brier score of P(error) before and after recalibration."""
    return {
        "ece_before": expected_calibration_error(p_before, wrong),
        "ece_after": expected_calibration_error(p_after, wrong),
        "brier_before": brier(p_before, wrong),
        "brier_after": brier(p_after, wrong),
    }


@dataclass(frozen=True)
class Selection:
    """How the cost was chosen and what it guarantees."""

    cost: float
    method: str
    details: dict[str, Any]


def select_cost(
    cal: CalibrationSet,
    p_error: F64,
    ood_threshold: float,
    *,
    defer_cost: float | None = None,
    max_defer_rate: float | None = None,
    target_risk: float | None = None,
    delta: float = 0.05,
    grid: Sequence[float] = DEFAULT_GRID,
) -> Selection:
    """Pick the cost by one rule: explicit, capacity, or certified risk (Learn-then-Test)."""
    chosen = [x is not None for x in (defer_cost, max_defer_rate, target_risk)]
    if sum(chosen) != 1:
        raise ValueError("give exactly one of --defer-cost, --max-defer-rate, --target-risk")
    eligible = cal.ood_score <= ood_threshold
    if defer_cost is not None:
        if not 0.0 <= defer_cost <= 1.0:
            raise ValueError(f"--defer-cost must be in [0, 1], got {defer_cost}")
        return Selection(defer_cost, "explicit", {})
    if max_defer_rate is not None:
        if not 0.0 <= max_defer_rate <= 1.0:
            raise ValueError(f"--max-defer-rate must be in [0, 1], got {max_defer_rate}")
        for cost in sorted(grid):
            rate = 1.0 - float((eligible & (p_error <= cost)).mean())
            if rate <= max_defer_rate:
                return Selection(
                    float(cost),
                    "max-defer-rate",
                    {"max_defer_rate": max_defer_rate, "deferral_rate": rate},
                )
        ood_rate = 1.0 - float(eligible.mean())
        raise ValueError(
            f"no cost defers at most {max_defer_rate:.3g} of studies: the OOD guard alone defers "
            f"{ood_rate:.3g}"
        )
    assert target_risk is not None
    certified = certify_cost(p_error, cal.wrong, eligible, grid, target_risk, delta)
    return Selection(
        certified.cost,
        "target-risk",
        {
            "procedure": "Learn-then-Test, fixed-sequence binomial tests (exact binomial p-values)",
            "target_risk": target_risk,
            "delta": delta,
            "guarantee": (
                f"P(auto-report error rate > {target_risk:g}) <= {delta:g} "
                "for studies drawn like the calibration set"
            ),
            "p_value": certified.p_value,
            "kept": certified.kept,
            "errors": certified.errors,
            "empirical_risk": certified.empirical_risk,
            "deferral_rate": certified.deferral_rate,
        },
    )


def recalibrate(cal: CalibrationSet, seed: int = 0) -> tuple[Recalibration, dict[str, float]]:
    """Choose and fit the recalibration map; report ECE/Brier before and after."""
    wrong = cal.wrong
    if len(np.unique(wrong)) < 2:
        identity = Recalibration("identity")
        return identity, calibration_metrics(cal.p_error_raw, cal.p_error_raw, wrong)
    model, losses = choose_recalibration(cal.p_error_raw, wrong, seed)
    return model, {**losses, **calibration_metrics(cal.p_error_raw, model(cal.p_error_raw), wrong)}
