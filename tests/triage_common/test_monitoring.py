"""Drift of P(error) against the calibration set's: PSI, the binned KS and the sliding window."""

from __future__ import annotations

import numpy as np
import pytest

from triage_common.monitoring import (
    SlidingHistogram,
    histogram_ks,
    population_stability_index,
)
from triage_common.policy_format import P_ERROR_BINS, p_error_histogram


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    """Identical histograms give PSI 0; 1,000 draws from the reference stay under 0.1, while a
    shift of P(error) by 0.15 goes far past the 0.25 alert line."""
    rng = np.random.default_rng(0)
    reference = p_error_histogram(rng.beta(2, 5, 5000))
    assert population_stability_index(reference, reference) == pytest.approx(0.0, abs=1e-12)
    same = p_error_histogram(rng.beta(2, 5, 1000))
    shifted = p_error_histogram(np.clip(rng.beta(2, 5, 1000) + 0.15, 0, 1))
    assert population_stability_index(reference, same) < 0.1
    assert population_stability_index(reference, shifted) > 0.25
    assert histogram_ks(reference, shifted) > histogram_ks(reference, same)
    with pytest.raises(ValueError, match="differ in bins"):
        population_stability_index([1, 2], [1, 2, 3])


def test_histogram_bins_cover_zero_to_one() -> None:
    """Twenty equal bins; 1.0 falls in the last bin and NaN is left out."""
    counts = p_error_histogram([0.0, 0.049, 0.05, 1.0, float("nan")])
    assert len(counts) == len(P_ERROR_BINS) - 1 == 20
    assert counts[0] == 2 and counts[1] == 1 and counts[-1] == 1 and sum(counts) == 4


def test_sliding_histogram_forgets_the_oldest() -> None:
    """The window keeps the latest ``size`` values; NaN is ignored."""
    window = SlidingHistogram(P_ERROR_BINS, size=3)
    for value in (0.01, 0.02, float("nan"), 0.99, 0.98):
        window.add(value)
    assert len(window) == 3
    counts = window.counts()
    assert counts[0] == 1 and counts[-1] == 2 and counts.sum() == 3
