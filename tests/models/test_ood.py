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


def test_multi_layer_guard_is_the_largest_scaled_distance() -> None:
    """The combined score is max_g d_g / scale_g and the components are each group's distance."""
    from models.ood import MultiLayerOOD

    rng = np.random.default_rng(3)
    groups = [rng.normal(size=(400, 5)), rng.normal(size=(400, 3))]
    guard = MultiLayerOOD([5, 3])
    for head, feats in zip(guard.groups, groups, strict=True):
        assert isinstance(head, MahalanobisOOD)
        mean, precision, _ = fit_gaussian(feats)
        head.set_statistics(mean, precision)
    guard.set_scales(np.array([2.0, 4.0]))
    probe = [torch.from_numpy(g[:7]).float() for g in groups]
    score, parts = guard(probe)
    expected = (parts / torch.tensor([2.0, 4.0])).amax(dim=1)
    torch.testing.assert_close(score, expected, rtol=1e-6, atol=1e-6)
    assert parts.shape == (7, 2)


def test_image_statistics_see_noise_and_collimation() -> None:
    """Quantum noise raises the high-pass statistic; bright borders raise border-minus-centre;
    the marker-sized patch in a corner barely moves either."""
    from models.ood import IMAGE_STATISTICS, image_statistics

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    base = (0.5 + 0.3 * np.sin(3 * yy) * np.cos(2 * xx)).astype(np.float32)
    noisy = base + rng.normal(0, 0.08, base.shape).astype(np.float32)
    framed = base.copy()
    framed[:6], framed[-6:], framed[:, :6], framed[:, -6:] = 1.5, 1.5, 1.5, 1.5
    marked = base.copy()
    marked[2:6, 54:62] = 1.5
    stats = image_statistics(torch.from_numpy(np.stack([base, noisy, framed, marked])[:, None]))
    noise, border = IMAGE_STATISTICS.index("noise"), IMAGE_STATISTICS.index("border_minus_centre")
    assert stats.shape == (4, len(IMAGE_STATISTICS))
    assert stats[1, noise] > 5 * stats[0, noise]
    assert stats[2, border] > stats[0, border] + 0.5
    assert abs(float(stats[3, border] - stats[0, border])) < 0.1
