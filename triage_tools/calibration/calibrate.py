"""Calibrating the defer cost on a labelled set of served-model outputs.

Input is a :class:`CalibrationSet` (plain arrays: probabilities, raw P(error), OOD score,
labels), built either by running the served ONNX pipeline over images or from a worklist export
of radiologists' final reads. Steps: check the set is large enough (:func:`check_minimums`);
split it by patient (:func:`split_by_patient`) into a part that fits the P(error) recalibration
(isotonic or Platt by held-out log loss) and a disjoint part that the cost is chosen and
certified on, so the certificate never reuses the labels the map was fitted to; sweep a grid of
defer costs; pick the cost by one of three rules; measure the sensitivity for each critical
finding among the auto-reported studies (:func:`critical_sensitivity`); write the policy with
the distribution of P(error) that production monitoring compares against
(:func:`monitoring_reference`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from triage_common.metrics import study_errors
from triage_common.policy_format import MonitoringReference, Recalibration, p_error_histogram
from triage_tools.calibration.recalibrate import (
    brier,
    choose_recalibration,
    expected_calibration_error,
)
from triage_tools.calibration.risk_control import (
    Method,
    binomial_interval,
    certify_cost,
    certify_per_site,
    min_studies_for,
)

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
    # Optional subgroups (evaluation tables): view (AP/PA), sex (F/M), age in years.
    views: tuple[str, ...] = ()
    sexes: tuple[str, ...] = ()
    ages: F64 | None = None
    portable: F64 | None = None  # a phantom's burned-in PORTABLE label (1/0), NaN: unknown
    #: Scores of the bundle's evaluation graph on the same images, by name (each (N,) or
    #: (N, G)): the baselines and both OOD guards (``triage_tools.calibration.served``).
    extra: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)

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
            and len(self.views) in (0, n)
            and len(self.sexes) in (0, n)
            and (self.ages is None or self.ages.shape == (n,))
            and (self.portable is None or self.portable.shape == (n,))
            and all(len(v) == n for v in self.extra.values())
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
            views=pick(self.views),
            sexes=pick(self.sexes),
            ages=None if self.ages is None else self.ages[idx],
            portable=None if self.portable is None else self.portable[idx],
            extra={k: v[idx] for k, v in self.extra.items()},
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
            row[f"positives/{label}"] = int(pos.sum())
            row[f"negatives/{label}"] = int(neg.sum())
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
    method: Method = "cluster",
    per_site: bool = False,
    seed: int = 0,
) -> Selection:
    """Pick the cost by one rule: explicit, capacity, or certified risk (Learn-then-Test).

    The certificate's unit is the patient (``method="cluster"``, see
    :mod:`triage_tools.calibration.risk_control`); ``per_site`` certifies every site of the set
    at once (one cost that holds at each)."""
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
    units = cal.patient_ids or None
    procedure = PROCEDURES[method]
    if per_site:
        by_site = certify_per_site(
            p_error, cal.wrong, eligible, grid, target_risk, delta, cal.sites,
            units=units, method=method, seed=seed,
        )  # fmt: skip
        auto = eligible & (p_error <= by_site.cost)
        return Selection(
            by_site.cost,
            "target-risk",
            {
                "procedure": procedure + f"; every site at delta/{len(by_site.sites)} "
                "(Bonferroni), one shared start",
                "certificate": method,
                "per_site": True,
                "target_risk": target_risk,
                "delta": delta,
                "guarantee": (
                    f"P(the auto-report error rate of any of the {len(by_site.sites)} sites > "
                    f"{target_risk:g}) <= {delta:g} for studies drawn like the calibration set"
                ),
                "sites": {
                    name: {
                        "certified_cost": c.cost,
                        "p_value": c.p_value,
                        "kept": c.kept,
                        "errors": c.errors,
                        "patients_kept": c.patients_kept,
                    }
                    for name, c in by_site.sites.items()
                },
                "delta_per_site": by_site.delta_per_site,
                "start_cost": by_site.start_cost,
                "kept": int(auto.sum()),
                "errors": int((cal.wrong.astype(bool) & auto).sum()),
                "deferral_rate": 1.0 - float(auto.mean()),
            },
        )
    certified = certify_cost(
        p_error, cal.wrong, eligible, grid, target_risk, delta,
        units=units, method=method, seed=seed,
    )  # fmt: skip
    return Selection(
        certified.cost,
        "target-risk",
        {
            "procedure": procedure,
            "certificate": method,
            "per_site": False,
            "target_risk": target_risk,
            "delta": delta,
            "guarantee": (
                f"P(auto-report error rate > {target_risk:g}) <= {delta:g} "
                "for studies drawn like the calibration set"
            ),
            "p_value": certified.p_value,
            "kept": certified.kept,
            "errors": certified.errors,
            "patients_kept": certified.patients_kept,
            "start_cost": certified.start_cost,
            "empirical_risk": certified.empirical_risk,
            "deferral_rate": certified.deferral_rate,
        },
    )


PROCEDURES: dict[str, str] = {
    "cluster": "Learn-then-Test, fixed-sequence tests; patient-level betting p-values "
    "(cluster-aware, Waudby-Smith and Ramdas 2023)",
    "binomial": "Learn-then-Test, fixed-sequence tests; exact binomial p-values over studies "
    "(assumes independent studies)",
}


class TooLittleData(ValueError):
    """The labelled set is below a minimum the calibration needs (a guard-rail refusal)."""


def check_minimums(
    cal: CalibrationSet,
    *,
    min_studies: int,
    min_errors: int,
    target_risk: float | None = None,
    delta: float = 0.05,
) -> None:
    """Refuse sets too small to calibrate on: fewer than ``min_studies`` labelled studies, fewer
    than ``min_errors`` errors or correct studies (recalibration needs both), or, for a
    certificate, fewer eligible studies than it needs even with no error."""
    labelled = int(np.isfinite(cal.truth).any(axis=1).sum())
    if labelled < min_studies:
        raise TooLittleData(
            f"the set has {labelled} labelled studies; calibrating needs at least "
            f"{min_studies} (--min-studies)"
        )
    errors = int(cal.wrong.sum())
    right = len(cal) - errors
    if min(errors, right) < min_errors:
        raise TooLittleData(
            f"the set has {errors} studies with an error and {right} without; recalibrating "
            f"P(error) needs at least {min_errors} of each (--min-errors)"
        )
    if target_risk is not None:
        need = min_studies_for(target_risk, delta)
        if len(cal) < need:
            raise TooLittleData(
                f"certifying an auto-report error rate of {target_risk:g} at delta {delta:g} "
                f"needs at least {need} auto-reported studies even with no error; the set has "
                f"{len(cal)} studies (--data)"
            )


def split_by_patient(
    cal: CalibrationSet, share: float, seed: int = 0
) -> tuple[CalibrationSet, CalibrationSet]:
    """(recalibration part, certification part): about ``share`` of the patients (by a seeded
    hash of the patient id, so every study of one patient lands in one part) and the rest."""
    if share <= 0.0:
        return cal.subset(np.zeros(len(cal), dtype=bool)), cal
    units = cal.patient_ids or tuple(str(i) for i in range(len(cal)))

    def unit_hash(unit: str) -> float:
        digest = hashlib.sha256(f"recal:{seed}:{unit}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    fit = np.array([unit_hash(u) < share for u in units], dtype=bool)
    return cal.subset(fit), cal.subset(~fit)


def critical_sensitivity(
    cal: CalibrationSet,
    p_error: F64,
    ood_threshold: float,
    cost: float,
    findings: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Per critical finding: its sensitivity among the studies the policy auto-reports.

    ``positives`` auto-reported studies carry the finding (reported label 1), ``detected`` of
    them were predicted present; ``interval`` is the exact (Clopper-Pearson) 95 % interval.
    A finding with no positive among the auto-reported studies has sensitivity NaN (nothing
    was missed, nothing was seen). Findings the bundle lacks are left out.
    """
    auto = (cal.ood_score <= ood_threshold) & (p_error <= cost)
    present = cal.probabilities >= cal.thresholds[None, :]
    out: dict[str, dict[str, Any]] = {}
    for label in findings:
        if label not in cal.labels:
            continue
        j = cal.labels.index(label)
        pos = auto & (cal.truth[:, j] == 1)
        n, hit = int(pos.sum()), int((pos & present[:, j]).sum())
        out[label] = {
            "sensitivity": hit / n if n else math.nan,
            "positives": n,
            "detected": hit,
            "missed": n - hit,
            "auto_reported": int(auto.sum()),
            "interval": binomial_interval(hit, n),
        }
    return out


def monitoring_reference(
    cal: CalibrationSet, p_error: F64, ood_threshold: float, cost: float
) -> MonitoringReference:
    """What production monitoring compares against: per site (and ``all``), the share of
    studies deferred and flagged OOD at ``cost`` and the histogram of P(error)."""
    eligible = cal.ood_score <= ood_threshold
    auto = eligible & (p_error <= cost)
    sites = np.asarray(cal.sites, dtype=object)
    groups = {"all": np.ones(len(cal), dtype=bool)}
    groups.update({str(s): sites == s for s in sorted(set(cal.sites))})
    return MonitoringReference(
        defer_cost=cost,
        studies={name: int(m.sum()) for name, m in groups.items()},
        deferral_rate={name: 1.0 - float(auto[m].mean()) for name, m in groups.items()},
        ood_rate={name: 1.0 - float(eligible[m].mean()) for name, m in groups.items()},
        p_error_histogram={name: p_error_histogram(p_error[m]) for name, m in groups.items()},
    )


def recalibrate(
    fit: CalibrationSet, measure: CalibrationSet | None = None, seed: int = 0
) -> tuple[Recalibration, dict[str, float]]:
    """Choose and fit the recalibration map on ``fit``; report ECE/Brier before and after on
    ``measure`` (default: ``fit`` itself). Without both outcomes in ``fit`` the map is the
    identity."""
    measure = fit if measure is None else measure
    wrong = measure.wrong
    if len(fit) < 2 or len(np.unique(fit.wrong)) < 2:
        identity = Recalibration("identity")
        return identity, calibration_metrics(measure.p_error_raw, measure.p_error_raw, wrong)
    model, losses = choose_recalibration(fit.p_error_raw, fit.wrong, seed)
    after = model(measure.p_error_raw)
    return model, {**losses, **calibration_metrics(measure.p_error_raw, after, wrong)}
