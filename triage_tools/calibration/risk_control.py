"""Choosing the defer cost with a finite-sample guarantee (Learn-then-Test, fixed sequence).

For a candidate cost c the service auto-reports the studies with P(error) <= c (and not OOD).
The auto-report risk R(c) is the error rate among those studies. To certify R(c) <= target
with probability at least 1 - delta we test H_c: R(c) > target with a valid p-value, by one of
two methods:

``cluster`` (the default): the unit of exchangeability is the patient, not the study. A
patient's studies share the patient's disease and anatomy, so their errors are correlated and
a test that counts studies as independent over-states its evidence. With ``k_i`` wrong among
the ``n_i`` kept studies of patient ``i``, ``R(c) = E[k_i] / E[n_i]``, so H_c says the patients'
``Y_i = (k_i - target * n_i) / M`` have a mean above 0 (``M`` the most studies one patient has:
``Y_i`` lies in ``[-target, 1 - target]``). Patients are taken in one fixed order (seeded,
label-free; only those with a kept study), and a bettor against H_c (Waudby-Smith and Ramdas,
"Estimating means of bounded random variables by betting", 2023) holds the wealth ``K_j =
prod_{i <= j} (1 - lambda_i Y_i)``, the bet ``lambda_i`` chosen from the patients before ``i``
only (aGRAPA, truncated at ``BET_CAP / (1 - target)``). Under H_c the wealth is a non-negative
supermartingale starting at 1, so by Ville's inequality ``P(max_j K_j >= 1 / delta) <= delta``:
the p-value is ``1 / max_j K_j``, whatever the correlation within patients. Patients are
independent of one another, their studies need not be.

``binomial``: the exact binomial p-value ``P(Binomial(n_c, target) <= k_c)`` over studies, valid
only when studies are independent (one study per patient); kept for comparison.

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
risk of half the target would pass at its expected error count, and ``START_SHARE`` (binomial;
``CLUSTER_START_SHARE`` for the betting test) of the
studies that can be auto-reported at all (capped at that number, and never below the
certifiable minimum above). This rule reads the kept counts alone, which
depend on the P(error) scores and never on the labels, so the order of the tests is still fixed
before the labels are seen. ``tests/triage_tools/calibration`` checks the violation rate in
simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Method = Literal["cluster", "binomial"]
METHODS: tuple[Method, ...] = ("cluster", "binomial")
#: Patient orders drawn (the test takes the first; fixed by the seed, label-free).
ORDERINGS = 1
#: The bet never risks more than this share of the wealth on one patient.
BET_CAP = 0.75
F64 = npt.NDArray[np.float64]


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


def binomial_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion; (NaN, NaN) for ``n == 0``."""
    if n <= 0:
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2.0

    def solve(predicate_high: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2.0
            if predicate_high:  # upper bound: P(X <= successes | mid) = tail
                if binomial_cdf(successes, n, mid) > tail:
                    lo = mid
                else:
                    hi = mid
            else:  # lower bound: P(X >= successes | mid) = tail
                if 1.0 - binomial_cdf(successes - 1, n, mid) < tail:
                    lo = mid
                else:
                    hi = mid
        return (lo + hi) / 2.0

    lower = 0.0 if successes == 0 else solve(False)
    upper = 1.0 if successes == n else solve(True)
    return (lower, upper)


def min_studies_for(target: float, delta: float) -> int:
    """Fewest kept studies that can certify ``target`` at level ``delta`` (with no errors)."""
    return math.ceil(math.log(delta) / math.log1p(-target))


#: The sequence starts no earlier than the cost that auto-reports this share of eligible studies
#: (the binomial test; the betting test needs more evidence before it can pass, so it starts at
#: CLUSTER_START_SHARE: in simulation that certified 141 of 200 sets against 76 at 0.10).
START_SHARE = 0.10
CLUSTER_START_SHARE = 0.20


def powered_start(target: float, delta: float, limit: int = 100_000) -> int:
    """Smallest n where floor(n * target / 2) errors among n kept studies certify ``target``."""
    n = min_studies_for(target, delta)
    while n < limit and binomial_cdf(int(n * target / 2), n, target) > delta:
        n += 1
    return n


def betting_p_value(
    errors: npt.ArrayLike, kept: npt.ArrayLike, target: float, bound: int, orders: npt.ArrayLike
) -> float:
    """p-value of H: the patients' risk ``E[errors] / E[kept]`` exceeds ``target``.

    ``errors`` and ``kept`` are per patient; ``bound`` is the most studies one patient can have
    (at least the largest ``kept``); the patients are taken in the order of ``orders[0]`` (a
    fixed, label-free permutation). See the module docstring.
    """
    k = np.asarray(errors, dtype=np.float64)
    n = np.asarray(kept, dtype=np.float64)
    if len(k) == 0:
        return 1.0
    if bound < max(1.0, float(n.max())):
        raise ValueError(f"bound {bound} is below the largest kept count {n.max():g}")
    order = np.asarray(orders, dtype=np.int64).reshape(-1, len(k))[0]
    # Only patients with a kept study bet (the others have Y = 0); choosing them reads the
    # scores alone, and E[Y | kept] has the sign of E[Y], so the test stays valid.
    order = order[n[order] > 0]
    if len(order) == 0:
        return 1.0
    ys = (k[order] - target * n[order]) / bound
    count = np.arange(1, len(ys) + 1, dtype=np.float64)
    # Running mean and variance of the patients before each one (prior: mean 0, variance
    # target * (1 - target) / bound, one pseudo-observation).
    prior_var = target * (1.0 - target) / bound
    mean = np.concatenate([[0.0], np.cumsum(ys)[:-1]]) / count
    dev = (ys - mean) ** 2
    var = (np.concatenate([[0.0], np.cumsum(dev)[:-1]]) + prior_var) / count
    bet = np.clip(-mean / (var + mean**2), 0.0, BET_CAP / (1.0 - target))
    log_wealth = np.cumsum(np.log1p(-bet * ys))
    top = float(log_wealth.max())
    return 1.0 if top <= 0.0 else math.exp(-top)


def patient_orders(units: int, seed: int = 0, orderings: int = ORDERINGS) -> npt.NDArray[np.int64]:
    """``orderings`` fixed permutations of ``units`` patients (label-free, seeded)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(units) for _ in range(orderings)]).astype(np.int64)


def unit_index(units: Sequence[str] | None, n: int) -> tuple[npt.NDArray[np.int64], int]:
    """Each study's patient as 0..P-1 (studies without a patient are their own unit)."""
    if not units:
        return np.arange(n, dtype=np.int64), n
    codes: dict[str, int] = {}
    index = np.array([codes.setdefault(u, len(codes)) for u in units], dtype=np.int64)
    return index, len(codes)


@dataclass(frozen=True)
class Certified:
    """The outcome of fixed-sequence testing over a grid of costs."""

    cost: float
    kept: int
    errors: int
    p_value: float
    deferral_rate: float
    empirical_risk: float
    method: Method = "cluster"
    patients_kept: int = 0
    start_cost: float = math.nan


class NotEnoughData(ValueError):
    """The calibration set is too small to certify the target risk."""


def start_cost(
    p_error: npt.ArrayLike,
    eligible: npt.ArrayLike,
    grid: npt.ArrayLike,
    target: float,
    delta: float,
    method: Method = "cluster",
) -> float:
    """The first grid cost of the sequence: the first that keeps the start count (see the
    module docstring; label-free). ``inf`` when no cost keeps that many."""
    p = np.asarray(p_error, dtype=np.float64)
    ok = np.asarray(eligible, dtype=bool)
    n_ok = int(ok.sum())
    need = min_studies_for(target, delta)
    share = CLUSTER_START_SHARE if method == "cluster" else START_SHARE
    wanted = max(powered_start(target, delta), math.ceil(share * n_ok))
    start_n = max(need, min(wanted, n_ok))
    for cost in np.sort(np.asarray(grid, dtype=np.float64)):
        if int((ok & (p <= cost)).sum()) >= start_n:
            return float(cost)
    return math.inf


def certify_cost(
    p_error: npt.ArrayLike,
    wrong: npt.ArrayLike,
    eligible: npt.ArrayLike,
    grid: npt.ArrayLike,
    target: float,
    delta: float,
    *,
    units: Sequence[str] | None = None,
    method: Method = "cluster",
    first_cost: float | None = None,
    seed: int = 0,
) -> Certified:
    """The largest grid cost whose auto-report risk is certified <= target w.p. >= 1 - delta.

    ``eligible`` marks studies that may be auto-reported at all (not OOD); ``units`` names each
    study's patient (the cluster-aware test's unit; without it every study is its own).
    ``first_cost`` fixes where the sequence starts (per-site certification starts every site at
    the same cost); by default :func:`start_cost`. Raises :class:`NotEnoughData` with the
    number of kept studies needed when nothing is certified.
    """
    if not 0 < target < 1 or not 0 < delta < 1:
        raise ValueError(f"target risk and delta must be in (0, 1), got {target}, {delta}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    p = np.asarray(p_error, dtype=np.float64)
    y = np.asarray(wrong, dtype=bool)
    ok = np.asarray(eligible, dtype=bool)
    need = min_studies_for(target, delta)
    first = start_cost(p, ok, grid, target, delta, method) if first_cost is None else first_cost
    unit, n_units = unit_index(units, len(p))
    bound = int(np.bincount(unit[ok], minlength=n_units).max()) if ok.any() else 1
    orders = patient_orders(n_units, seed)
    best: Certified | None = None
    most_kept = 0
    stopped = "the end of the grid"
    for cost in np.sort(np.asarray(grid, dtype=np.float64)):
        kept = ok & (p <= cost)
        n, k = int(kept.sum()), int((y & kept).sum())
        most_kept = max(most_kept, n)
        if cost < first or n == 0:
            continue  # before the sequence starts (decided from counts only, see above)
        if method == "binomial":
            p_value = binomial_cdf(k, n, target)
        else:
            per_kept = np.bincount(unit[kept], minlength=n_units)
            per_wrong = np.bincount(unit[kept & y], minlength=n_units)
            p_value = betting_p_value(per_wrong, per_kept, target, max(bound, 1), orders)
        if p_value > delta:
            stopped = f"cost {cost:.3g} ({n} auto-reported, {k} wrong, p = {p_value:.3g})"
            break
        best = Certified(
            float(cost),
            n,
            k,
            p_value,
            1.0 - n / len(p),
            k / n,
            method,
            len(np.unique(unit[kept])),
            first,
        )
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
            f"cost (it starts at cost {first:.3g}); the error rate of the most "
            "confident studies is too close to the target: use more calibration studies or a "
            "higher target risk"
        )
    return best


@dataclass(frozen=True)
class SiteCertified:
    """Per-site certification: one cost certified at every site at once."""

    cost: float
    delta_per_site: float
    sites: dict[str, Certified]
    start_cost: float


def certify_per_site(
    p_error: npt.ArrayLike,
    wrong: npt.ArrayLike,
    eligible: npt.ArrayLike,
    grid: npt.ArrayLike,
    target: float,
    delta: float,
    sites: Sequence[str],
    *,
    units: Sequence[str] | None = None,
    method: Method = "cluster",
    seed: int = 0,
) -> SiteCertified:
    """The largest cost whose auto-report risk is certified <= target at every site at once.

    Each of the S sites is certified on its own studies at ``delta / S`` (Bonferroni), every
    site's sequence starting at the same cost (the pooled start), so the smallest of the sites'
    certified costs lies inside every site's certified range: with probability at least
    ``1 - delta`` no site's risk exceeds the target at it (nor, being a mixture of them, the
    pooled risk). A site that cannot be certified raises :class:`NotEnoughData` naming it.
    """
    p = np.asarray(p_error, dtype=np.float64)
    y = np.asarray(wrong, dtype=bool)
    ok = np.asarray(eligible, dtype=bool)
    names = sorted({str(s) for s in sites})
    if not names:
        raise ValueError("per-site certification needs the site of every study")
    per = delta / len(names)
    first = start_cost(p, ok, grid, target, per, method)
    site_arr = np.asarray(sites, dtype=object)
    results: dict[str, Certified] = {}
    for name in names:
        rows = site_arr == name
        site_units = [u for u, r in zip(units, rows, strict=True) if r] if units else None
        try:
            results[name] = certify_cost(
                p[rows],
                y[rows],
                ok[rows],
                grid,
                target,
                per,
                units=site_units,
                method=method,
                first_cost=first,
                seed=seed,
            )
        except NotEnoughData as exc:
            raise NotEnoughData(f"site {name!r} ({int(rows.sum())} studies): {exc}") from exc
    cost = min(r.cost for r in results.values())
    return SiteCertified(cost, per, results, first)
