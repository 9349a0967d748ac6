"""Fixtures of the explainer tests: a tiny autoencoder beside the test bundle's classifier."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(name="tiny_autoencoder", scope="session")
def fixture_tiny_autoencoder(tmp_path_factory: pytest.TempPathFactory, tiny_phantoms: Path) -> Path:
    """A 64 px autoencoder run trained for one epoch on 24 tiny phantoms (seconds)."""
    from models.autoencoder import AutoencoderTrainingOptions, train_autoencoder

    out = tmp_path_factory.mktemp("tiny-autoencoder") / "autoencoder"
    train_autoencoder(
        AutoencoderTrainingOptions(
            data=tiny_phantoms, out=out, size=64, epochs=1, batch_size=8, max_images=24
        )
    )
    return out


@pytest.fixture(name="bundle_classifier")
def fixture_bundle_classifier(bundle_path: Path) -> Path:
    """The classifier run the test bundle was exported from."""
    return bundle_path.parent / f".{bundle_path.name}-runs" / "classifier"
