"""Latent Shift: the lambda search's stop rules, the sweep, the attribution map, a trained toy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from models.autoencoder import AutoencoderConfig, ConvAutoencoder, fit_autoencoder
from models.latent_shift import (
    ClassifierProbability,
    LatentShiftSettings,
    StopRule,
    latent_shift,
)

SIZE = 16
REGION = (slice(None), slice(None), slice(4, 10), slice(4, 10))  # a 6 x 6 box


def _identity(t: Tensor) -> Tensor:
    return t


def _image(level: float = 0.8) -> Tensor:
    x = torch.full((1, SIZE, SIZE), 0.3, dtype=torch.float64)
    x[0, 4:10, 4:10] = level
    return x


def _region_mean(images: Tensor) -> Tensor:
    return images[REGION].mean(dim=(1, 2, 3))


def _logistic(gain: float = 10.0, centre: float = 0.5) -> ClassifierProbability:
    """sigmoid(gain * (mean of the box - centre)) as the prediction of one label."""
    return ClassifierProbability(lambda im: (gain * (_region_mean(im) - centre))[:, None], 0)


LOOSE = {"floor": 0.0, "drop": 1.0, "max_image_change": 1e9}


def test_linear_toy_falls_below_the_floor_with_monotone_frames() -> None:
    """With an identity autoencoder the prediction falls frame by frame until under the floor."""
    settings = LatentShiftSettings(floor=0.05, drop=1.0, max_image_change=1e9)
    cf = latent_shift(_image(), _identity, _identity, _logistic(), settings)
    assert cf.stop_rule is StopRule.BELOW_FLOOR
    assert float(cf.predictions[-1]) < 0.05 < float(cf.predictions[0])
    assert np.all(np.diff(cf.predictions.numpy()) <= 0)
    assert cf.frames.shape == (10, 1, SIZE, SIZE) and cf.attribution.shape == (1, SIZE, SIZE)
    assert cf.lambdas[0] == 0 and float(cf.lambdas[-1]) == cf.lambda_reached < 0
    assert cf.prediction_drop == pytest.approx(float(cf.predictions[0] - cf.predictions[-1]))


def test_attribution_lies_in_the_region_the_target_reads() -> None:
    """The map is the mean |frame difference|: positive inside the box, zero outside it."""
    cf = latent_shift(_image(), _identity, _identity, _logistic(), LatentShiftSettings())
    inside = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    inside[0, 4:10, 4:10] = True
    assert (
        bool((cf.attribution[inside] > 0).all()) and float(cf.attribution[~inside].abs().max()) == 0
    )
    expected = (cf.frames[-1] - cf.frames[0]).abs() / (len(cf.frames) - 1)  # a straight path
    torch.testing.assert_close(cf.attribution, expected)


def test_stops_when_the_prediction_dropped_by_the_set_amount() -> None:
    """drop=0.3 stops at the first step 0.3 below the start, which is the bound."""
    settings = LatentShiftSettings(floor=0.0, drop=0.3, max_image_change=1e9)
    cf = latent_shift(_image(), _identity, _identity, _logistic(), settings)
    assert cf.stop_rule is StopRule.DROPPED_BY
    assert cf.prediction_drop > 0.3


def test_stops_when_the_image_changed_too_much() -> None:
    """A 1% image-change budget stops the search and the last frame stays within it."""
    settings = LatentShiftSettings(floor=0.0, drop=1.0, max_image_change=0.01)
    cf = latent_shift(_image(), _identity, _identity, _logistic(), settings)
    assert cf.stop_rule is StopRule.IMAGE_CHANGED
    assert cf.image_change <= 0.01


def test_stops_at_the_lambda_bound() -> None:
    """A target that barely moves runs the search out to max_lambda."""
    settings = LatentShiftSettings(max_lambda=50.0, **LOOSE)
    cf = latent_shift(_image(), _identity, _identity, _logistic(gain=1e-3), settings)
    assert cf.stop_rule is StopRule.MAX_LAMBDA
    assert cf.lambda_reached <= -50.0


def test_stops_when_the_prediction_no_longer_falls() -> None:
    """A target with a minimum is overshot; the bound is the last step that still fell."""

    def bowl(images: Tensor) -> Tensor:
        return 0.2 + (_region_mean(images) - 0.5) ** 2

    settings = LatentShiftSettings(step=1.0, step_growth=0.0, **LOOSE)
    cf = latent_shift(_image(), _identity, _identity, bowl, settings)
    assert cf.stop_rule is StopRule.NO_LONGER_FALLS
    assert float(cf.predictions[-1]) < float(cf.predictions[0])
    assert cf.lambda_reached < 0


def test_zero_gradient_changes_nothing() -> None:
    """A target that ignores the image gives frames equal to x0 and a zero map."""

    def constant(images: Tensor) -> Tensor:
        return images.sum(dim=(1, 2, 3)) * 0.0 + 0.7

    cf = latent_shift(_image(), _identity, _identity, constant, LatentShiftSettings())
    assert cf.stop_rule is StopRule.ZERO_GRADIENT and cf.lambda_reached == 0.0
    assert bool((cf.frames == cf.frames[0]).all()) and float(cf.attribution.abs().max()) == 0.0
    assert cf.prediction_drop == 0.0


def test_settings_refuse_fewer_than_two_frames() -> None:
    """frames=1 cannot make a sweep and is refused."""
    with pytest.raises(ValueError, match="frames"):
        LatentShiftSettings(frames=1)


def test_trained_toy_autoencoder_gives_a_falling_prediction() -> None:
    """On a small autoencoder trained on box images, the box's brightness falls frame by frame."""
    gen = torch.Generator().manual_seed(0)
    n, size = 256, 32
    levels = torch.rand(n, generator=gen)
    images = torch.full((n, 1, size, size), -0.5)
    for i in range(n):
        images[i, 0, 8:20, 8:20] = 2 * levels[i] - 1
    torch.manual_seed(0)
    model = ConvAutoencoder(AutoencoderConfig(size=size, widths=(8, 16), latent_channels=8))
    fit_autoencoder(model, images.numpy(), epochs=30, batch_size=32, lr=3e-3, gen=gen)

    def brightness(im: Tensor) -> Tensor:
        return torch.sigmoid(4.0 * im[:, :, 8:20, 8:20].mean(dim=(1, 2, 3)))

    x = images[int(levels.argmax())]
    settings = LatentShiftSettings(max_image_change=0.5)  # the toy's images carry little mass
    cf = latent_shift(x, model.encode, model.decode, brightness, settings)
    preds = cf.predictions.numpy()
    assert cf.prediction_drop > 0.1
    assert np.all(np.diff(preds) <= 1e-6), preds
    assert cf.frames.shape == (10, 1, size, size) and cf.attribution.shape == x.shape
