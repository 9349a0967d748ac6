"""Shared phantom fixtures: one small generated dataset (all syntaxes, some laterals)."""

from __future__ import annotations

import pytest

from models.phantoms.generate import SynthConfig, synthesize
from models.phantoms.scenario import Scenario, load_scenario
from models.phantoms.study import plan_dataset
from tests.models.phantoms.phantom_data import (
    SMALL_LATERAL,
    SMALL_SEED,
    SMALL_SIZE,
    SMALL_STUDIES,
    SmallDataset,
    read_rows,
)


@pytest.fixture(name="confounded", scope="session")
def fixture_confounded() -> Scenario:
    """The built-in default scenario."""
    return load_scenario("confounded")


@pytest.fixture(name="small_dataset", scope="session")
def fixture_small_dataset(
    tmp_path_factory: pytest.TempPathFactory, confounded: Scenario
) -> SmallDataset:
    """18 studies at 128 px, transfer syntax mixed (explicit, RLE, JPEG 2000), many laterals."""
    root = tmp_path_factory.mktemp("phantoms") / "small"
    synthesize(
        SynthConfig(
            out=root,
            studies=SMALL_STUDIES,
            seed=SMALL_SEED,
            scenario=confounded,
            scenario_source="confounded",
            size=SMALL_SIZE,
            syntax="mixed",
            lateral_fraction=SMALL_LATERAL,
        )
    )
    specs = plan_dataset(
        confounded,
        SMALL_SEED,
        SMALL_STUDIES,
        syntax="mixed",
        lateral_fraction=SMALL_LATERAL,
        size=SMALL_SIZE,
    )
    return SmallDataset(root=root, rows=read_rows(root), specs=specs, scenario=confounded)
