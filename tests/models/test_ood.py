"""The Mahalanobis OOD guard: closed form, shrinkage, and separation of unlike inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ood import MahalanobisOOD, fit_gaussian, ledoit_wolf_shrinkage


def test_score_is_the_mahalanobis_distance() -> None:
    """The in-graph score equals (f - mean)^T P (f - mean) computed in numpy."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    mean, precision, _ = fit_gaussian(feats, shrinkage=0.0)
    head = MahalanobisOOD(6)
    head.set_statistics(mean, precision)
    probe = rng.normal(size=(3, 6))
    expected = np.einsum("nc,cd,nd->n", probe - mean, precision, probe - mean)
    got = head(torch.from_numpy(probe).float()).double().numpy()
    # rtol as before; atol is np.allclose's default, which the check used
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-8, equal_nan=False)


def test_ledoit_wolf_shrinks_more_when_features_outnumber_samples() -> None:
    """Few samples in many dimensions get strong shrinkage; many samples get little."""
    rng = np.random.default_rng(1)
    # Correlated features (a random mixing matrix), so the identity target is not the truth.
    many = rng.normal(size=(5000, 20)) @ rng.normal(size=(20, 20))
    few = rng.normal(size=(30, 200)) @ rng.normal(size=(200, 200))
    assert ledoit_wolf_shrinkage(many - many.mean(0)) < 0.05
    assert ledoit_wolf_shrinkage(few - few.mean(0)) > 0.5


def test_far_inputs_score_far_above_the_training_percentile() -> None:
    """A shifted distribution scores well above the 99th percentile of in-distribution data."""
    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(32, 32))
    train = rng.normal(size=(2000, 32)) @ mixing
    held = rng.normal(size=(500, 32)) @ mixing
    mean, precision, shrinkage = fit_gaussian(train)
    assert 0.0 < shrinkage < 0.1
    score = lambda f: np.einsum("nc,cd,nd->n", f - mean, precision, f - mean)  # noqa: E731
    threshold = np.percentile(score(held), 99)
    shifted = rng.normal(loc=1.5, size=(50, 32)) @ mixing
    assert (score(shifted) > threshold).mean() == pytest.approx(1.0, rel=1e-6)
    assert (score(held) > threshold).mean() <= 0.011  # the 99th percentile of held itself
