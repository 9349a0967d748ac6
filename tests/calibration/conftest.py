"""Fixtures of the calibration tests: a tiny phantom set and a bundle made on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.calibration.phantom_bundle import build_subprocess


@pytest.fixture(name="tiny_phantoms", scope="session")
def fixture_tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 phantom studies at 64 px (mixed transfer syntaxes, some laterals), with masks."""
    from models.phantoms.generate import SynthConfig, synthesize
    from models.phantoms.scenario import load_scenario

    out = tmp_path_factory.mktemp("calibration-phantoms") / "data"
    synthesize(
        SynthConfig(
            out=out,
            studies=40,
            seed=3,
            scenario=load_scenario("confounded"),
            scenario_source="confounded",
            size=64,
            syntax="mixed",
        )
    )
    return out


@pytest.fixture(name="phantom_bundle", scope="session")
def fixture_phantom_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_phantoms: Path) -> Path:
    """A random-init 64 px bundle whose runs name the tiny phantom set (built in a subprocess)."""
    return build_subprocess(tmp_path_factory.mktemp("calibration-bundle") / "bundle", tiny_phantoms)
