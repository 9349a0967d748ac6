"""Recalibrating P(error): isotonic regression (pool adjacent violators) or Platt scaling.

The method is chosen by log loss on a held-out half of the calibration set; the chosen map is
then refitted on all of it. A map is plain data (knots or two coefficients; the class lives in
:mod:`triage_common.policy_format`) so that it can be written into the policy file and applied
by the service without scikit-learn.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from triage_common.policy_format import RECALIBRATION_EPS as _EPS
from triage_common.policy_format import Recalibration

F64 = npt.NDArray[np.float64]


def fit_isotonic(p: npt.ArrayLike, y: npt.ArrayLike) -> Recalibration:
    """Pool-adjacent-violators fit of y on p; knots at block means, interpolated between."""
    order = np.argsort(np.asarray(p, dtype=np.float64), kind="mergesort")
    ps = np.asarray(p, dtype=np.float64)[order]
    ys = np.asarray(y, dtype=np.float64)[order]
    means: list[float] = []
    weights: list[float] = []
    xs: list[float] = []
    for pi, yi in zip(ps, ys, strict=True):
        means.append(float(yi))
        weights.append(1.0)
        xs.append(float(pi))
        while len(means) > 1 and means[-2] >= means[-1]:
            w = weights[-2] + weights[-1]
            m = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w
            x = (xs[-2] * weights[-2] + xs[-1] * weights[-1]) / w
            means[-2:], weights[-2:], xs[-2:] = [m], [w], [x]
    clipped = [min(max(m, _EPS), 1 - _EPS) for m in means]
    return Recalibration("isotonic", tuple(xs), tuple(clipped))


def fit_platt(p: npt.ArrayLike, y: npt.ArrayLike, iterations: int = 100) -> Recalibration:
    """Logistic regression of y on logit(p) by Newton's method (Platt scaling)."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    t = np.asarray(y, dtype=np.float64)
    z = np.log(q / (1 - q))
    design = np.stack([z, np.ones_like(z)], axis=1)
    w = np.array([1.0, 0.0])
    for _ in range(iterations):
        s = 1.0 / (1.0 + np.exp(-(design @ w)))
        grad = design.T @ (s - t)
        hess = design.T @ (design * (s * (1 - s))[:, None]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if np.abs(step).max() < 1e-10:
            break
    return Recalibration("platt", a=float(w[0]), b=float(w[1]))


def log_loss(p: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Mean binary cross-entropy."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    t = np.asarray(y, dtype=np.float64)
    return float(-np.mean(t * np.log(q) + (1 - t) * np.log(1 - q)))


def brier(p: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Mean squared difference between probability and outcome."""
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def expected_calibration_error(p: npt.ArrayLike, y: npt.ArrayLike, bins: int = 15) -> float:
    """ECE with equal-width bins: sum over bins of |mean(p) - mean(y)| weighted by bin share."""
    q = np.asarray(p, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    index = np.minimum((q * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = index == b
        if sel.any():
            total += sel.mean() * abs(q[sel].mean() - t[sel].mean())
    return float(total)


def choose_recalibration(
    p: npt.ArrayLike, y: npt.ArrayLike, seed: int = 0
) -> tuple[Recalibration, dict[str, float]]:
    """Pick isotonic or Platt by log loss on a held-out half, then refit on everything."""
    q = np.asarray(p, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(q))
    fit_idx, held_idx = order[: len(q) // 2], order[len(q) // 2 :]
    scores = {}
    for name, fitter in (("isotonic", fit_isotonic), ("platt", fit_platt)):
        model = fitter(q[fit_idx], t[fit_idx])
        scores[name] = log_loss(model(q[held_idx]), t[held_idx])
    best = min(scores, key=lambda k: scores[k])
    final = fit_isotonic(q, t) if best == "isotonic" else fit_platt(q, t)
    return final, {f"heldout_log_loss_{k}": v for k, v in scores.items()}
