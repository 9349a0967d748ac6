"""Choosing the defer cost with a finite-sample guarantee (Learn-then-Test, fixed sequence).

For a candidate cost c the service auto-reports the studies with P(error) <= c (and not OOD).
The auto-report risk R(c) is the error rate among those studies. To certify R(c) <= target
with probability at least 1 - delta we test H_c: R(c) > target with the exact binomial p-value
P(Binomial(n_c, target) <= k_c), where n_c studies are kept and k_c of them are wrong.

Fixed-sequence testing (Angelopoulos et al., Learn then Test, 2021): candidates are ordered from
the most conservative (fewest auto-reports) to the least, tested in that order at level delta,
and testing stops at the first candidate not rejected. The chosen cost is the last rejected one:
the lowest deferral whose risk is certified. The family-wise error is at most delta because the
order is fixed before looking at the data.

With zero errors the p-value is (1 - target)^n, so certifying needs
n >= log(delta) / log(1 - target) kept studies (149 for target 2 %, delta 5 %).

Where the sequence starts: a candidate keeping only a handful of studies can hardly be
certified, and one unlucky cluster of errors there ends the whole sequence (an error model's
lowest-P(error) studies are not always its most accurate ones). So candidates are tested only
from the first one that keeps ``start_n`` studies: the larger of the smallest n at which a true
risk of half the target would pass at its expected error count, and ``START_SHARE`` of the
studies that can be auto-reported at all (capped at that number, and never below the
certifiable minimum above). This rule reads the kept counts alone, which
depend on the P(error) scores and never on the labels, so the order of the tests is still fixed
before the labels are seen. ``tests/triage_tools/calibration`` checks the violation rate in
simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (exact for the sizes used here)."""
    if k >= n:
        return 1.0
    if k < 0:
        return 0.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * log_p
        + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def min_studies_for(target: float, delta: float) -> int:
    """Fewest kept studies that can certify ``target`` at level ``delta`` (with no errors)."""
    return math.ceil(math.log(delta) / math.log1p(-target))


#: The sequence starts no earlier than the cost that auto-reports this share of eligible studies.
START_SHARE = 0.10


def powered_start(target: float, delta: float, limit: int = 100_000) -> int:
    """Smallest n where floor(n * target / 2) errors among n kept studies certify ``target``."""
    n = min_studies_for(target, delta)
    while n < limit and binomial_cdf(int(n * target / 2), n, target) > delta:
        n += 1
    return n


@dataclass(frozen=True)
class Certified:
    """The outcome of fixed-sequence testing over a grid of costs."""

    cost: float
    kept: int
    errors: int
    p_value: float
    deferral_rate: float
    empirical_risk: float


class NotEnoughData(ValueError):
    """The calibration set is too small to certify the target risk."""


def certify_cost(
    p_error: npt.ArrayLike,
    wrong: npt.ArrayLike,
    eligible: npt.ArrayLike,
    grid: npt.ArrayLike,
    target: float,
    delta: float,
) -> Certified:
    """The largest grid cost whose auto-report risk is certified <= target w.p. >= 1 - delta.

    ``eligible`` marks studies that may be auto-reported at all (not OOD). Raises
    :class:`NotEnoughData` with the number of kept studies needed when nothing is certified.
    """
    if not 0 < target < 1 or not 0 < delta < 1:
        raise ValueError(f"target risk and delta must be in (0, 1), got {target}, {delta}")
    p = np.asarray(p_error, dtype=np.float64)
    y = np.asarray(wrong, dtype=bool)
    ok = np.asarray(eligible, dtype=bool)
    need = min_studies_for(target, delta)
    eligible = int(ok.sum())
    wanted = max(powered_start(target, delta), math.ceil(START_SHARE * eligible))
    start_n = max(need, min(wanted, eligible))
    best: Certified | None = None
    most_kept = 0
    stopped = "the end of the grid"
    for cost in np.sort(np.asarray(grid, dtype=np.float64)):
        kept = ok & (p <= cost)
        n, k = int(kept.sum()), int((y & kept).sum())
        most_kept = max(most_kept, n)
        if n < start_n:
            continue  # before the sequence starts (decided from counts only, see above)
        p_value = binomial_cdf(k, n, target)
        if p_value > delta:
            stopped = f"cost {cost:.3g} ({n} auto-reported, {k} wrong, p = {p_value:.3g})"
            break
        best = Certified(float(cost), n, k, p_value, 1.0 - n / len(p), k / n)
    if best is None:
        claim = (
            f"cannot certify an auto-report error rate of at most {target:.3g} with probability "
            f"{1 - delta:.3g}"
        )
        if most_kept < need:
            raise NotEnoughData(
                f"{claim}: that needs at least {need} auto-reported calibration studies even "
                f"with no errors (the set has {len(p)} studies, {int(ok.sum())} not OOD)"
            )
        raise NotEnoughData(
            f"{claim}: the fixed sequence of tests stopped at {stopped} before certifying any "
            f"cost (it starts at {start_n} auto-reported studies); the error rate of the most "
            "confident studies is too close to the target: use more calibration studies or a "
            "higher target risk"
        )
    return best
