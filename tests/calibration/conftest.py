"""Fixtures of the calibration tests: a tiny phantom set and a bundle made on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundle_factory import build_bundle_subprocess

#: The OOD threshold of the calibration bundle: random-init features stay far below it, so the
#: guard (tested elsewhere) never flags the phantoms these tests calibrate on.
OOD_THRESHOLD = 1e6


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
    out = tmp_path_factory.mktemp("calibration-bundle") / "bundle"
    return build_bundle_subprocess(out, data=tiny_phantoms, ood_threshold=OOD_THRESHOLD)
