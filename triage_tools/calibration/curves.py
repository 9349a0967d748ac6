"""Risk-coverage curves, AURC and E-AURC (Geifman et al. 2019), and AUGRC (Traub et al. 2024)
for a deferral score."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def risk_coverage(score: npt.ArrayLike, wrong: npt.ArrayLike) -> tuple[F64, F64]:
    """Coverage and selective risk when keeping the k lowest-score studies, k = 1..n.

    ``score`` is an error score (higher = more likely wrong: deferred first).
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(wrong, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    errors = np.cumsum(y[order])
    kept = np.arange(1, len(s) + 1, dtype=np.float64)
    coverage: F64 = kept / len(s)
    risk: F64 = errors / kept
    return coverage, risk


def aurc(score: npt.ArrayLike, wrong: npt.ArrayLike) -> float:
    """Area under the risk-coverage curve (mean selective risk over coverages k/n)."""
    _, risk = risk_coverage(score, wrong)
    return float(risk.mean())


def e_aurc(score: npt.ArrayLike, wrong: npt.ArrayLike) -> float:
    """Excess AURC: AURC minus that of the oracle ordering (errors deferred first)."""
    y = np.asarray(wrong, dtype=np.float64)
    return aurc(score, y) - aurc(y, y)


def risk_at_deferral(score: npt.ArrayLike, wrong: npt.ArrayLike, deferral: float) -> float:
    """Error rate of the auto-reported studies when the top ``deferral`` share is deferred."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(wrong, dtype=np.float64)
    keep = max(1, round(len(s) * (1.0 - deferral)))
    order = np.argsort(s, kind="mergesort")[:keep]
    return float(y[order].mean())


def augrc(score: npt.ArrayLike, wrong: npt.ArrayLike) -> float:
    """Area under the generalized risk-coverage curve (Traub et al., "Overcoming common flaws in
    the evaluation of selective classification systems", 2024): the mean over coverages k/n of
    the generalized risk, the share of *all* studies that are kept and wrong, ``errors_k / n``.
    It is the probability that a random study is both auto-reported and wrong, averaged over
    operating points, and does not reward deferring correct studies as AURC can."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(wrong, dtype=np.float64)
    if not len(s):
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    generalized = np.cumsum(y[order]) / len(s)
    return float(generalized.mean())
