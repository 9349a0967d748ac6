"""Evaluating the defer policy against simple alternatives (numpy only; ``triage evaluate``).

For one group of studies (all, one site, the held-out sites...) :func:`group_metrics` gives:

* the classifier: per-finding AUROC and macro AUROC;
* the policy in force (cost, recalibration, OOD threshold): deferral rate, study accuracy
  (every finding right) and macro AUROC of the auto-reported studies against all studies;
* the realised risk of the policy: the error rate of the auto-reported studies, with its
  patient-level interval;
* failure detection, for each deferral score: AUROC and AUPR of predicting a study error,
  AURC, E-AURC and AUGRC (Traub et al. 2024) of the risk-coverage curve, and the accuracy of
  auto-reported studies when 10, 20, 30 and 50 % of the studies are deferred by that score.
  Scores (:data:`METHOD_ORDER`, those the data allow): the served error model (raw P(error);
  recalibration is monotone, so rankings are those of the raw output), and from the bundle's
  evaluation graph on the same images the Grad-CAM error model, the same model with its maps
  permuted among studies of similar probabilities
  (:func:`triage_common.evaluation.similar_probability_permutation`),
  the probabilities-only network of the same head and the image-only direct (DUP-style)
  predictor; softmax response, entropy, the CAM concentration scores of seed 003's hypothesis
  (a spread-out map means an error: normalised map entropy, minus the share of mass in the
  top 5 % of cells), random deferral (expected values: AUROC 0.5, AUPR, AURC and every
  selective risk equal to the error rate) and the oracle (errors deferred first).

Groups (:func:`subgroups`): all, each site (and the training and held-out pools), each view
(AP/PA), sex and age band when the set carries them.

:func:`bootstrap` resamples patients (all studies of a drawn patient come together) and gives
percentile 95 % intervals of the main metrics, including the paired differences of
:data:`PAIRS` (the Grad-CAM error model against the probabilities-only network, against its
permuted maps and against the image-only predictor; the served model against softmax
response).

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
from triage_tools.calibration.curves import augrc, aurc, risk_at_deferral, risk_coverage

F64 = npt.NDArray[np.float64]
DEFERRALS = (0.1, 0.2, 0.3, 0.5)
#: Every score, in report order; a set shows those it has (:func:`scores`).
METHOD_ORDER = (
    "error_model",
    "gradcam",
    "gradcam_permuted",
    "probs_only",
    "direct",
    "softmax_response",
    "entropy",
    "cam_entropy",
    "cam_top5",
)
#: The scores every set has (the evaluation graph adds the others).
SCORED_METHODS = ("error_model", "softmax_response", "entropy")
METHODS = (*SCORED_METHODS, "random", "oracle")
#: ``CalibrationSet.extra`` keys of the evaluation graph's scores, by method.
EXTRA_SCORES = {
    "gradcam": "p_error_gradcam",
    "gradcam_permuted": "p_error_gradcam_permuted",
    "probs_only": "p_error_probs_only",
    "direct": "p_error_direct",
    "cam_entropy": "cam_entropy",
    "cam_top5": "cam_top5",
}
#: Paired differences (a - b) that get patient-level intervals when both scores exist.
PAIRS = (
    ("gradcam", "probs_only"),
    ("gradcam", "gradcam_permuted"),
    ("gradcam", "direct"),
    ("probs_only", "direct"),
    ("error_model", "softmax_response"),
)
#: Age bands of the subgroup tables (years, upper bound exclusive).
AGE_BANDS = ((0, 40, "<40"), (40, 65, "40-64"), (65, 200, "65+"))
#: Studies per block of the similar-probability permutation.


@dataclass(frozen=True)
class PolicyView:
    """The policy being evaluated: the cost, the P(error) map and the OOD threshold."""

    defer_cost: float
    ood_threshold: float
    recalibrate: Callable[[F64], F64]
    version: str = ""  # empty: the bundle default
    source: str = "bundle default"
    single_layer_threshold: float = math.nan  # the earlier, single-layer OOD guard's
    target_risk: float = math.nan  # the certified target, when the policy has one


def scores(cal: CalibrationSet) -> dict[str, F64]:
    """Deferral scores (higher: deferred first) of the methods with a score of their own, in
    :data:`METHOD_ORDER`."""
    found = {
        "error_model": np.asarray(cal.p_error_raw, dtype=np.float64),
        "softmax_response": softmax_response_score(cal.probabilities, cal.thresholds),
        "entropy": entropy_score(cal.probabilities),
    }
    found.update({m: cal.extra[key] for m, key in EXTRA_SCORES.items() if key in cal.extra})
    return {m: found[m] for m in METHOD_ORDER if m in found}


def cam_concentration(cams: npt.NDArray[np.float32]) -> dict[str, F64]:
    """Seed 003's hypothesis as error scores (higher: more likely wrong), averaged over the
    findings: the entropy of each normalised map divided by its maximum (log of the cells), and
    minus the share of each map's mass in its top 5 % of cells (at least one). A map with no
    mass counts as fully spread."""
    c = np.asarray(cams, dtype=np.float64).reshape(cams.shape[0], cams.shape[1], -1)
    cells = c.shape[-1]
    total = c.sum(axis=-1, keepdims=True)
    q = np.where(total > 0, c / np.where(total > 0, total, 1.0), 1.0 / cells)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=-1) / math.log(max(cells, 2))
    k = max(1, round(0.05 * cells))
    top = np.sort(q, axis=-1)[..., -k:].sum(axis=-1)
    return {"cam_entropy": ent.mean(axis=1), "cam_top5": -top.mean(axis=1)}


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
            "augrc": math.nan,
            "accuracy_at_deferral": {f"{d:g}": math.nan for d in DEFERRALS},
        }
    area = aurc(score, wrong)
    return {
        **error_detection(score, wrong),
        "aurc": area,
        "e_aurc": area - aurc(wrong, wrong),
        "augrc": augrc(score, wrong),
        "accuracy_at_deferral": {
            f"{d:g}": 1.0 - risk_at_deferral(score, wrong, d) for d in DEFERRALS
        },
    }


def random_detection(wrong: F64) -> dict[str, Any]:
    """Expected values for deferring at random: every selective risk is the error rate."""
    rate = float(wrong.mean()) if len(wrong) else math.nan
    oracle = aurc(wrong, wrong) if len(wrong) else math.nan
    n = len(wrong)
    return {
        "auroc": 0.5,
        "aupr_error": rate if rate > 0 else math.nan,
        "aurc": rate,
        "e_aurc": rate - oracle,
        # expected generalized risk at coverage k/n is (k/n) * rate: mean (n+1)/(2n) * rate
        "augrc": rate * (n + 1) / (2 * n) if n else math.nan,
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
    single = cal.extra.get("ood_single")
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
            "auto_errors": int(wrong[auto].sum()),
            "risk_auto": 1.0 - _accuracy(wrong[auto]),
            "target_risk": policy.target_risk,
            "accuracy_all": _accuracy(wrong),
            "accuracy_auto": _accuracy(wrong[auto]),
            "macro_auroc_all": macro,
            "macro_auroc_auto": macro_auroc(cal.truth[auto], cal.probabilities[auto]),
        },
        "error_detection": methods,
        "ood_flag_rate": float((~(cal.ood_score <= policy.ood_threshold)).mean())
        if len(cal)
        else math.nan,
        "ood_flag_rate_single_layer": float((~(single <= policy.single_layer_threshold)).mean())
        if single is not None and len(cal) and math.isfinite(policy.single_layer_threshold)
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
        "policy.risk_auto": 1.0 - _accuracy(wrong[auto]),
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
        out[f"{name}.augrc"] = augrc(s, wrong)
        out[f"{name}.accuracy_at_0.2"] = 1.0 - risk_at_deferral(s, wrong, 0.2)
    for a, b in PAIRS:
        if f"{a}.auroc" in out and f"{b}.auroc" in out:
            for metric in ("auroc", "aurc", "augrc"):
                out[f"{a}-{b}.{metric}"] = out[f"{a}.{metric}"] - out[f"{b}.{metric}"]
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


def subgroups(
    cal: CalibrationSet, heldout_sites: Sequence[str] = ()
) -> dict[str, npt.NDArray[np.bool_]]:
    """:func:`site_groups`, then one group per view (AP/PA), sex and age band the set has, and
    portable and non-portable films (phantoms: the burned-in PORTABLE label)."""
    out = site_groups(cal, heldout_sites)
    for kind, values in (("view", cal.views), ("sex", cal.sexes)):
        arr = np.asarray(values, dtype=object)
        for value in sorted(set(values)):
            out[f"{kind}: {value}"] = arr == value
    if cal.portable is not None and np.isfinite(cal.portable).all():
        for flag, film in ((1.0, "portable"), (0.0, "not portable")):
            if (cal.portable == flag).any():
                out[f"film: {film}"] = cal.portable == flag
    if cal.ages is not None:
        for lo, hi, name in AGE_BANDS:
            band = (cal.ages >= lo) & (cal.ages < hi)
            if band.any():
                out[f"age: {name}"] = band
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
    anatomy_root: Path | None = None,
) -> dict[str, Any]:
    """Everything, per group (:func:`subgroups`): metrics, bootstrap intervals, CAM IoU, and
    with ``anatomy_root`` (a phantom folder with anatomy masks) where the maps put their mass."""
    groups = subgroups(cal, heldout_sites)
    iou = cam_iou_per_study(cal, masks_dir) if masks_dir is not None else None
    shares = map_shares(cal, anatomy_root) if anatomy_root is not None else None
    if cal.cams is not None:
        cal = replace(cal, extra={**cal.extra, **cam_concentration(cal.cams)})
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
        if shares is not None:
            metrics["map_mass"] = summarise_shares(cal.subset(groups[name]), shares[groups[name]])
        report[name] = metrics
    return report


def map_shares(cal: CalibrationSet, root: Path) -> F64 | None:
    """(N, L, R) share of each map's mass in each anatomy region
    (:data:`triage_common.anatomy.REGIONS`, ground-truth phantom masks); None without maps or
    masks."""
    from triage_common.anatomy import has_anatomy, load_regions, mass_shares

    if cal.cams is None or not has_anatomy(root, cal.sop_uids):
        return None
    h = cal.cams.shape[2]
    size = h * max(1, 32 // h)
    return mass_shares(cal.cams, load_regions(root, cal.sop_uids, size))


def summarise_shares(cal: CalibrationSet, shares: F64) -> dict[str, dict[str, Any]]:
    """Per finding, over the studies where it is predicted present: the mean share of the map's
    mass in each region, split by whether the finding call is right or wrong."""
    from triage_common.anatomy import REGIONS

    present = cal.probabilities >= cal.thresholds[None, :]
    out: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(cal.labels):
        row: dict[str, Any] = {}
        for outcome, keep in (
            ("right", present[:, j] & (cal.truth[:, j] == 1)),
            ("wrong", present[:, j] & (cal.truth[:, j] == 0)),
        ):
            values = shares[keep, j, :]
            finite = np.isfinite(values[:, 0])  # a map without mass has no shares
            row[outcome] = {
                "n": int(finite.sum()),
                **{
                    region: float(values[finite, r].mean()) if finite.any() else math.nan
                    for r, region in enumerate(REGIONS)
                },
            }
        out[label] = row
    return out


def interval(metrics: Mapping[str, Any], key: str) -> tuple[float, float]:
    """The 95 % interval of ``key`` in a group's metrics (NaN, NaN when absent)."""
    value = metrics.get("intervals", {}).get(key)
    if value is None or value[0] is None or value[1] is None:  # absent, or NaN through JSON
        return (math.nan, math.nan)
    return (float(value[0]), float(value[1]))
