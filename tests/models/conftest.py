"""Fixtures for the DenseNet, Grad-CAM and weight tests: small models with realistic BN state."""

from __future__ import annotations

import pytest

from models.densenet import DenseNet
from tests.models.model_factory import ModelFactory, make_model


@pytest.fixture(name="make_model")
def fixture_make_model() -> ModelFactory:
    """Builds a seeded model of a named configuration with settled BatchNorm, in eval mode."""
    return make_model


@pytest.fixture(name="compact_model")
def fixture_compact_model(make_model: ModelFactory) -> DenseNet:
    """The compact configuration, 1 channel, 4 labels, CAM at the final ReLU, eval mode."""
    return make_model()
