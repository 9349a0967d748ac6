"""Evaluating the defer policy against simple alternatives (numpy only; ``triage evaluate``).

For one group of studies (all, one site, the held-out sites...) :func:`group_metrics` gives:

* the classifier: per-finding AUROC and macro AUROC;
* the policy in force (cost, recalibration, OOD threshold): deferral rate, study accuracy
  (every finding right) and macro AUROC of the auto-reported studies against all studies;
* failure detection, for each deferral score: AUROC and AUPR of predicting a study error,
  AURC and E-AURC of the risk-coverage curve, and the accuracy of auto-reported studies when
  10, 20, 30 and 50 % of the studies are deferred by that score. Scores: the Grad-CAM error
  model (raw P(error); recalibration is monotone, so rankings are those of the raw output),
  softmax response, entropy, random deferral (expected values: AUROC 0.5, AUPR, AURC and
  every selective risk equal to the error rate) and the oracle (errors deferred first).

:func:`bootstrap` resamples patients (all studies of a drawn patient come together) and gives
percentile 95 % intervals of the main metrics, including the paired differences between the
error model and softmax response.

The pieces the training report shares (per-finding and macro AUROC, the AUROC and AUPR of a
deferral score, CAM IoU with the phantom masks) come from :mod:`triage_common.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from triage_common.evaluation import (
    cam_iou_matrix,
    classifier_aurocs,
    error_detection,
    study_error_rate,
    summarise_iou,
)
from triage_common.metrics import macro_auroc
from triage_common.scores import entropy_score, softmax_response_score
from triage_tools.calibration.calibrate import CalibrationSet
from triage_tools.calibration.curves import aurc, risk_at_deferral, risk_coverage

F64 = npt.NDArray[np.float64]
DEFERRALS = (0.1, 0.2, 0.3, 0.5)
SCORED_METHODS = ("error_model", "softmax_response", "entropy")
METHODS = (*SCORED_METHODS, "random", "oracle")


@dataclass(frozen=True)
class PolicyView:
    """The policy being evaluated: the cost, the P(error) map and the OOD threshold."""

    defer_cost: float
    ood_threshold: float
    recalibrate: Callable[[F64], F64]
    version: str = ""  # empty: the bundle default
    source: str = "bundle default"


def scores(cal: CalibrationSet) -> dict[str, F64]:
    """Deferral scores (higher: deferred first) of the methods with a score of their own."""
    return {
        "error_model": np.asarray(cal.p_error_raw, dtype=np.float64),
        "softmax_response": softmax_response_score(cal.probabilities, cal.thresholds),
        "entropy": entropy_score(cal.probabilities),
    }


def auto_reported(cal: CalibrationSet, policy: PolicyView) -> npt.NDArray[np.bool_]:
    """The studies the policy auto-reports (the service's rule)."""
    p_error = np.asarray(policy.recalibrate(cal.p_error_raw), dtype=np.float64)
    keep: npt.NDArray[np.bool_] = (p_error <= policy.defer_cost) & (
        cal.ood_score <= policy.ood_threshold
    )
    return keep


def _accuracy(wrong: F64) -> float:
    return float(1.0 - wrong.mean()) if len(wrong) else math.nan


def detection(score: F64, wrong: F64) -> dict[str, Any]:
    """AUROC, AUPR-error, AURC, E-AURC and accuracy at fixed deferral for one score."""
    if not len(wrong):
        return {
            "auroc": math.nan,
            "aupr_error": math.nan,
            "aurc": math.nan,
            "e_aurc": math.nan,
            "accuracy_at_deferral": {f"{d:g}": math.nan for d in DEFERRALS},
        }
    area = aurc(score, wrong)
    return {
        **error_detection(score, wrong),
        "aurc": area,
        "e_aurc": area - aurc(wrong, wrong),
        "accuracy_at_deferral": {
            f"{d:g}": 1.0 - risk_at_deferral(score, wrong, d) for d in DEFERRALS
        },
    }


def random_detection(wrong: F64) -> dict[str, Any]:
    """Expected values for deferring at random: every selective risk is the error rate."""
    rate = float(wrong.mean()) if len(wrong) else math.nan
    oracle = aurc(wrong, wrong) if len(wrong) else math.nan
    return {
        "auroc": 0.5,
        "aupr_error": rate if rate > 0 else math.nan,
        "aurc": rate,
        "e_aurc": rate - oracle,
        "accuracy_at_deferral": {f"{d:g}": 1.0 - rate for d in DEFERRALS},
    }


def group_metrics(cal: CalibrationSet, policy: PolicyView) -> dict[str, Any]:
    """Every metric of the module docstring for the studies of ``cal``."""
    wrong = cal.wrong
    auto = auto_reported(cal, policy)
    per_label, macro = classifier_aurocs(cal.truth, cal.probabilities, cal.labels)
    score = scores(cal)
    methods: dict[str, Any] = {name: detection(s, wrong) for name, s in score.items()}
    methods["random"] = random_detection(wrong)
    methods["oracle"] = detection(wrong, wrong)
    return {
        "studies": len(cal),
        "patients": len(set(cal.patient_ids)) if cal.patient_ids else len(cal),
        "study_error_rate": study_error_rate(wrong),
        "auroc": per_label,
        "macro_auroc": macro,
        "policy": {
            "defer_cost": policy.defer_cost,
            "deferral_rate": float(1.0 - auto.mean()) if len(auto) else math.nan,
            "auto_reported": int(auto.sum()),
            "accuracy_all": _accuracy(wrong),
            "accuracy_auto": _accuracy(wrong[auto]),
            "macro_auroc_all": macro,
            "macro_auroc_auto": macro_auroc(cal.truth[auto], cal.probabilities[auto]),
        },
        "error_detection": methods,
        "ood_flag_rate": float((~(cal.ood_score <= policy.ood_threshold)).mean())
        if len(cal)
        else math.nan,
    }


def main_metrics(cal: CalibrationSet, policy: PolicyView) -> dict[str, float]:
    """The metrics that get bootstrap intervals, as flat ``name: value`` pairs."""
    wrong = cal.wrong
    auto = auto_reported(cal, policy)
    out = {
        "macro_auroc": macro_auroc(cal.truth, cal.probabilities),
        "policy.deferral_rate": float(1.0 - auto.mean()),
        "policy.accuracy_all": _accuracy(wrong),
        "policy.accuracy_auto": _accuracy(wrong[auto]),
        "policy.macro_auroc_auto": macro_auroc(cal.truth[auto], cal.probabilities[auto]),
    }
    oracle = aurc(wrong, wrong)
    for name, s in scores(cal).items():
        area = aurc(s, wrong)
        found = error_detection(s, wrong)
        out[f"{name}.auroc"] = found["auroc"]
        out[f"{name}.aupr_error"] = found["aupr_error"]
        out[f"{name}.aurc"] = area
        out[f"{name}.e_aurc"] = area - oracle
        out[f"{name}.accuracy_at_0.2"] = 1.0 - risk_at_deferral(s, wrong, 0.2)
    out["error_model-softmax_response.auroc"] = (
        out["error_model.auroc"] - out["softmax_response.auroc"]
    )
    out["error_model-softmax_response.aurc"] = (
        out["error_model.aurc"] - out["softmax_response.aurc"]
    )
    return out


def bootstrap(
    cal: CalibrationSet,
    policy: PolicyView,
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of :func:`main_metrics` over patient-level resamples.

    A patient's studies are drawn together (with their multiplicity), so correlated studies of
    one patient do not narrow the interval. Without patient ids every study is its own unit.
    """
    units = cal.patient_ids or tuple(str(i) for i in range(len(cal)))
    groups: dict[str, list[int]] = {}
    for i, unit in enumerate(units):
        groups.setdefault(unit, []).append(i)
    members = [np.asarray(v, dtype=np.int64) for v in groups.values()]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        picked = rng.integers(0, len(members), size=len(members))
        index = np.concatenate([members[k] for k in picked])
        for key, value in main_metrics(cal.subset(index), policy).items():
            draws.setdefault(key, []).append(value)
    tail = (1.0 - level) / 2.0 * 100.0
    out: dict[str, tuple[float, float]] = {}
    for key, values in draws.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if len(arr) < max(2, resamples // 2):
            out[key] = (math.nan, math.nan)
        else:
            lo, hi = np.percentile(arr, [tail, 100.0 - tail])
            out[key] = (float(lo), float(hi))
    return out


def cam_iou_per_study(cal: CalibrationSet, masks_dir: Path) -> F64:
    """(N, L) top-p% IoU of each CAM with its phantom mask; NaN where there is no mask or map.

    See :func:`triage_common.evaluation.cam_iou_matrix`: a finding counts where
    ``masks/<sop_uid>.npz`` has a non-empty mask for it (the finding is truly present).
    """
    if cal.cams is None or not cal.sop_uids:
        return np.full((len(cal), len(cal.labels)), np.nan)
    return cam_iou_matrix(cal.cams, cal.labels, cal.sop_uids, masks_dir)


def curves(cal: CalibrationSet) -> dict[str, tuple[F64, F64]]:
    """Risk-coverage curve of every method (random: its expected, flat curve)."""
    wrong = cal.wrong
    out = {name: risk_coverage(s, wrong) for name, s in scores(cal).items()}
    coverage = np.arange(1, len(wrong) + 1, dtype=np.float64) / max(1, len(wrong))
    out["random"] = (coverage, np.full(len(wrong), float(wrong.mean()) if len(wrong) else 0.0))
    out["oracle"] = risk_coverage(wrong, wrong)
    return out


def site_groups(
    cal: CalibrationSet, heldout_sites: Sequence[str] = ()
) -> dict[str, npt.NDArray[np.bool_]]:
    """``all``, one group per site, and (when some sites are held out) the two pools."""
    sites = np.asarray(cal.sites, dtype=object)
    out: dict[str, npt.NDArray[np.bool_]] = {"all": np.ones(len(cal), dtype=bool)}
    present = sorted(set(cal.sites))
    held = [s for s in present if s in set(heldout_sites)]
    if held and len(held) < len(present):
        # Pools only where they differ from a single site's group.
        if len(present) - len(held) > 1:
            out["training sites"] = ~np.isin(sites, held)
        if len(held) > 1:
            out["held-out sites"] = np.isin(sites, held)
    for site in present:
        label = f"site: {site}" + (" (held out)" if site in held else "")
        out[label] = sites == site
    return out


def evaluate(
    cal: CalibrationSet,
    policy: PolicyView,
    *,
    heldout_sites: Sequence[str] = (),
    masks_dir: Path | None = None,
    resamples: int = 200,
    seed: int = 0,
    progress: Callable[[Sequence[str]], Any] | None = None,
) -> dict[str, Any]:
    """Everything, per group: metrics, bootstrap intervals, CAM IoU."""
    groups = site_groups(cal, heldout_sites)
    iou = cam_iou_per_study(cal, masks_dir) if masks_dir is not None else None
    cal = replace(cal, cams=None)  # only the IoU reads the maps: the resamples need not copy them
    names: Sequence[str] = list(groups)
    iterator = progress(names) if progress is not None else names
    report: dict[str, Any] = {}
    for name in iterator:
        sub = cal.subset(groups[name])
        metrics = group_metrics(sub, policy)
        metrics["intervals"] = (
            bootstrap(sub, policy, resamples, seed) if resamples > 0 and len(sub) > 1 else {}
        )
        if iou is not None:
            metrics["cam_iou"] = summarise_iou(iou[groups[name]], cal.labels)
        report[name] = metrics
    return report


def interval(metrics: Mapping[str, Any], key: str) -> tuple[float, float]:
    """The 95 % interval of ``key`` in a group's metrics (NaN, NaN when absent)."""
    value = metrics.get("intervals", {}).get(key)
    return (math.nan, math.nan) if value is None else (float(value[0]), float(value[1]))
