"""Defer-cost calibration maths: the risk guarantee, recalibration and risk-coverage curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from triage_common.policy_format import Recalibration
from triage_tools.calibration.curves import augrc, aurc, e_aurc, risk_at_deferral, risk_coverage
from triage_tools.calibration.recalibrate import (
    brier,
    choose_recalibration,
    expected_calibration_error,
    fit_isotonic,
    fit_platt,
)
from triage_tools.calibration.risk_control import (
    NotEnoughData,
    betting_p_value,
    binomial_cdf,
    binomial_interval,
    certify_cost,
    certify_per_site,
    min_studies_for,
    patient_orders,
)


def test_binomial_cdf_matches_direct_sum() -> None:
    """The binomial tail equals the textbook sum of probabilities."""
    n, p = 30, 0.1
    direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(4))
    assert binomial_cdf(3, n, p) == pytest.approx(direct, rel=1e-12)


def test_two_percent_needs_about_150_kept_studies() -> None:
    """Certifying a 2% risk at delta 0.05 needs 149 kept studies even without errors."""
    assert min_studies_for(0.02, 0.05) == 149
    assert binomial_cdf(0, 149, 0.02) <= 0.05 < binomial_cdf(0, 148, 0.02)


def test_too_few_studies_are_refused_with_the_number_needed() -> None:
    """With too small a calibration set the refusal says how many studies it would need."""
    p = np.linspace(0, 0.5, 100)
    with pytest.raises(NotEnoughData, match="at least 149"):
        certify_cost(p, np.zeros(100), np.ones(100), np.linspace(0, 1, 21), 0.02, 0.05)


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores uniform on [0, 1]; a study is wrong with probability 0.3 * score**2."""
    score = rng.uniform(0, 1, n)
    wrong = rng.uniform(0, 1, n) < 0.3 * score**2
    return score, wrong


def _true_risk(cost: float) -> float:
    """Exact auto-report risk for the simulated distribution: mean of 0.3 s^2 over s <= cost."""
    return 0.1 * cost**2 if cost > 0 else 0.0


def test_guarantee_holds_in_simulation() -> None:
    """Over many calibration draws the certified cost's true risk exceeds the target at most
    delta of the time (within binomial sampling error of the simulation)."""
    rng = np.random.default_rng(0)
    target, delta, trials = 0.05, 0.1, 400
    grid = np.linspace(0.01, 1.0, 100)
    violations = refusals = 0
    for _ in range(trials):
        score, wrong = _draw(rng, 1000)
        try:
            chosen = certify_cost(score, wrong, np.ones_like(wrong), grid, target, delta)
        except NotEnoughData:
            refusals += 1  # a refusal certifies nothing, so it cannot violate the guarantee
            continue
        violations += _true_risk(chosen.cost) > target
    # delta = 0.1 over 400 trials: SE = 0.015; allow 3 SE above delta.
    assert violations / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    assert refusals / trials < 0.05  # 1,000 studies are plenty: refusals stay rare


def test_certified_cost_is_not_trivially_conservative() -> None:
    """With plenty of data the certified cost nears the cost where the risk reaches the target."""
    rng = np.random.default_rng(1)
    score, wrong = _draw(rng, 20000)
    chosen = certify_cost(score, wrong, np.ones_like(wrong), np.linspace(0.01, 1, 100), 0.05, 0.1)
    # true risk 0.1 c^2 = 0.05 at c = 0.707; with 20k studies the bound is tight within ~0.1.
    assert 0.55 <= chosen.cost <= 0.71


def test_ood_studies_are_never_counted_as_auto_reported() -> None:
    """Studies flagged OOD are excluded from the kept set whatever their P(error)."""
    p = np.zeros(400)
    wrong = np.zeros(400, dtype=bool)
    wrong[:100] = True
    eligible = ~wrong  # every wrong study is OOD-flagged
    chosen = certify_cost(p, wrong, eligible, [0.5], 0.02, 0.05)
    assert chosen.kept == 300 and chosen.errors == 0


def test_isotonic_is_monotone_and_fits_steps() -> None:
    """Isotonic recalibration is monotone and recovers a step relationship."""
    p = np.linspace(0, 1, 200)
    y = (p > 0.5).astype(float)
    iso = fit_isotonic(p, y)
    out = iso(np.linspace(0, 1, 50))
    assert np.all(np.diff(out) >= -1e-12)
    assert iso([0.1])[0] < 0.01 and iso([0.9])[0] > 0.99


def test_platt_recovers_logistic_coefficients() -> None:
    """Platt scaling recovers the slope and intercept of a logistic relationship."""
    rng = np.random.default_rng(2)
    p = rng.uniform(0.01, 0.99, 20000)
    z = np.log(p / (1 - p))
    y = rng.uniform(size=p.size) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    platt = fit_platt(p, y)
    assert platt.a == pytest.approx(0.5, abs=0.05) and platt.b == pytest.approx(-1.0, abs=0.06)


def test_recalibration_reduces_ece_on_miscalibrated_scores() -> None:
    """Recalibrating over-confident scores lowers the ECE and the Brier score."""
    rng = np.random.default_rng(3)
    true = rng.uniform(0, 0.5, 4000)
    y = rng.uniform(size=true.size) < true
    raw = np.clip(true * 1.8, 0, 1)
    model, scores = choose_recalibration(raw, y)
    assert set(scores) == {"heldout_log_loss_isotonic", "heldout_log_loss_platt"}
    assert expected_calibration_error(model(raw), y) < expected_calibration_error(raw, y)
    assert brier(model(raw), y) < brier(raw, y)


def test_recalibration_round_trips_through_json_types() -> None:
    """A recalibration map written to the policy file reads back to the same function."""
    iso = fit_isotonic([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    again = Recalibration.from_dict(iso.to_dict())
    # np.allclose's default tolerances, which this check used before
    np.testing.assert_allclose(
        again([0.05, 0.25, 0.5]), iso([0.05, 0.25, 0.5]), rtol=1e-5, atol=1e-8, equal_nan=False
    )
    with pytest.raises(ValueError, match="unknown recalibration"):
        Recalibration.from_dict({"method": "magic"})


def test_risk_coverage_and_aurc_by_hand() -> None:
    """AURC and E-AURC match a hand-computed example."""
    score = [0.1, 0.2, 0.3, 0.4]
    wrong = [0, 1, 0, 1]
    coverage, risk = risk_coverage(score, wrong)
    # k / 4: exact in doubles, so 1e-12 allows only rounding
    assert coverage.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0], abs=1e-12)
    assert risk.tolist() == pytest.approx([0, 0.5, 1 / 3, 0.5], rel=1e-6)
    assert aurc(score, wrong) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4, rel=1e-6)
    # oracle keeps the two correct studies first: risks 0, 0, 1/3, 1/2.
    assert e_aurc(score, wrong) == pytest.approx(
        aurc(score, wrong) - (0 + 0 + 1 / 3 + 0.5) / 4, rel=1e-6
    )
    assert risk_at_deferral(score, wrong, 0.5) == pytest.approx(0.5, rel=1e-6)


def _clustered(
    rng: np.random.Generator, patients: int, sd: float, sizes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Patients with several studies sharing one score and a patient effect on the error's logit
    (sd ``sd``): errors are correlated within patients, patients are independent."""
    size = rng.choice(sizes, size=patients)
    unit = np.repeat(np.arange(patients), size)
    score = rng.uniform(0, 1, patients)[unit]
    logit = -3.0 + 2.5 * score + rng.normal(0, sd, patients)[unit]
    p_wrong = 1 / (1 + np.exp(-logit))
    return score, rng.uniform(size=len(unit)) < p_wrong, [str(u) for u in unit], p_wrong


def _violation_rate(method: str, sd: float, sizes: tuple[int, ...], patients: int) -> float:
    """Share of 200 simulated calibration sets whose certified cost's true risk (from 300,000
    simulated patients) exceeds the target; refusals certify nothing and never violate."""
    rng = np.random.default_rng(11)
    score, _, _, p_wrong = _clustered(rng, 300_000, sd, sizes)
    order = np.argsort(score)
    cut = score[order]
    running = np.cumsum(p_wrong[order]) / np.arange(1, len(score) + 1)

    def true_risk(cost: float) -> float:
        k = int(np.searchsorted(cut, cost, side="right"))
        return float(running[k - 1]) if k else 0.0

    target = round(true_risk(0.6), 3)
    grid = np.round(np.arange(0, 1.0001, 0.01), 6)
    violations = 0
    for _ in range(200):
        s, w, units, _ = _clustered(rng, patients, sd, sizes)
        try:
            chosen = certify_cost(
                s, w, np.ones(len(s)), grid, target, 0.1, units=units, method=method
            )
        except NotEnoughData:
            continue
        violations += true_risk(chosen.cost) > target
    return violations / 200


#: delta 0.1 over 200 simulated sets: 3 standard errors of the violation rate.
_BAR = 0.1 + 3 * math.sqrt(0.1 * 0.9 / 200)


def test_study_level_binomial_certificate_fails_when_patients_correlate() -> None:
    """With strongly correlated studies per patient, the old binomial test (studies as if
    independent) certifies costs whose true risk exceeds the target more often than delta:
    the simulation can tell a broken certificate from a valid one."""
    assert _violation_rate("binomial", 3.5, (3, 5, 7), 800) > _BAR


def test_cluster_certificate_holds_when_patients_correlate() -> None:
    """The patient-level betting certificate keeps the violation rate at most delta on the
    same strongly clustered data."""
    assert _violation_rate("cluster", 3.5, (3, 5, 7), 800) <= _BAR


def test_cluster_certificate_holds_on_phantom_like_patients() -> None:
    """With mostly one study per patient and a mild patient effect (like the phantoms), the
    cluster certificate stays valid and certifies most 1,000-patient sets."""
    assert _violation_rate("cluster", 1.0, (1, 1, 1, 2, 3), 1000) <= _BAR
    rng = np.random.default_rng(3)
    certified = 0
    for _ in range(40):
        s, w, units, _ = _clustered(rng, 1000, 1.0, (1, 1, 1, 2, 3))
        try:
            certify_cost(s, w, np.ones(len(s)), np.linspace(0, 1, 101), 0.135, 0.1, units=units)
            certified += 1
        except NotEnoughData:
            pass
    assert certified >= 20


def test_betting_p_value_reads_the_evidence() -> None:
    """Many patients without an error give a tiny p-value; errors at or above the target give
    no evidence at all (p = 1)."""
    orders = patient_orders(500)
    assert betting_p_value(np.zeros(500), np.ones(500), 0.2, 1, orders) < 1e-6
    assert betting_p_value(np.ones(500), np.ones(500), 0.2, 1, orders) == 1.0
    with pytest.raises(ValueError, match="bound 1 is below"):
        betting_p_value(np.zeros(3), np.array([1, 2, 1]), 0.2, 1, patient_orders(3))


def test_per_site_certification_holds_at_the_worse_site() -> None:
    """Certifying per site picks a cost at which the riskier site is under the target too, and
    names a site that cannot be certified."""
    rng = np.random.default_rng(4)
    n = 3000
    score = rng.uniform(0, 1, n)
    site = np.where(np.arange(n) % 2 == 0, "good", "bad")
    risk = np.where(site == "good", 0.1 * score, 0.35 * score)
    wrong = rng.uniform(size=n) < risk
    grid = np.round(np.arange(0, 1.0001, 0.01), 6)
    pooled = certify_cost(score, wrong, np.ones(n), grid, 0.1, 0.1)
    per = certify_per_site(score, wrong, np.ones(n), grid, 0.1, 0.1, tuple(site))
    assert per.cost < pooled.cost and set(per.sites) == {"good", "bad"}
    assert per.delta_per_site == pytest.approx(0.05, rel=1e-12)
    # the bad site's true risk at the per-site cost: mean of 0.35 s over s <= cost
    assert 0.35 * per.cost / 2 <= 0.1
    few = np.array(["good"] * (n - 5) + ["tiny"] * 5)
    with pytest.raises(NotEnoughData, match="site 'tiny'"):
        certify_per_site(score, wrong, np.ones(n), grid, 0.1, 0.1, tuple(few))


def test_clopper_pearson_interval_matches_known_values() -> None:
    """The exact interval of 5 of 10 is [0.187, 0.813]; 0 of 10 reaches 0.308; n = 0 is NaN."""
    lo, hi = binomial_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.18709, 0.81291), abs=1e-5)
    assert binomial_interval(0, 10) == pytest.approx((0.0, 0.30850), abs=1e-5)
    assert all(math.isnan(v) for v in binomial_interval(0, 0))


def test_augrc_by_hand() -> None:
    """AUGRC averages errors-kept / n over coverages: keeping 0.1, 0.2(err), 0.3, 0.4(err) gives
    generalized risks 0, 1/4, 1/4, 2/4."""
    assert augrc([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]) == pytest.approx(
        (0 + 0.25 + 0.25 + 0.5) / 4, rel=1e-12
    )
