"""The confounded scenario's PORTABLE label carries the configured association with disease."""

from __future__ import annotations

import math

import pytest

from models.phantoms.generate import SynthConfig, synthesize
from models.phantoms.scenario import Scenario
from tests.models.phantoms.phantom_data import read_rows
from triage_common.labels import DEFAULT_LABELS, truth_column


@pytest.fixture(name="confounded_rows", scope="module")
def fixture_confounded_rows(
    tmp_path_factory: pytest.TempPathFactory, confounded: Scenario
) -> list[dict[str, str]]:
    """Frontal rows of a 400-study confounded dataset at 64 px."""
    root = tmp_path_factory.mktemp("confounded") / "data"
    synthesize(
        SynthConfig(
            out=root,
            studies=400,
            seed=2024,
            scenario=confounded,
            scenario_source="confounded",
            size=64,
            lateral_fraction=0.0,
        )
    )
    return [r for r in read_rows(root) if r["view"] != "LL"]


def _rate(rows: list[dict[str, str]]) -> tuple[float, int]:
    portable = sum(r["portable"] == "1" for r in rows)
    return portable / len(rows), len(rows)


@pytest.mark.slow
def test_portable_marker_association_per_site(
    confounded_rows: list[dict[str, str]], confounded: Scenario
) -> None:
    """P(portable | finding) and P(portable | no finding) match each site within 4 binomial SE."""
    for site in confounded.sites:
        rows = [r for r in confounded_rows if r["site"] == site.name]
        assert len(rows) >= 40, site.name
        sick = [r for r in rows if any(r[truth_column(k)] == "1" for k in DEFAULT_LABELS)]
        well = [r for r in rows if r not in sick]
        for group, expected in (
            (sick, site.portable.given_finding),
            (well, site.portable.given_no_finding),
        ):
            rate, n = _rate(group)
            tolerance = 4.0 * math.sqrt(expected * (1.0 - expected) / n) + 0.01
            assert rate == pytest.approx(expected, abs=tolerance), (site.name, rate, expected, n)
        sick_rate, well_rate = _rate(sick)[0], _rate(well)[0]
        if site.heldout:
            assert sick_rate < well_rate  # association reversed at the held-out site
        else:
            assert sick_rate > well_rate + 0.4


def test_portable_films_are_ap_and_carry_the_label(confounded_rows: list[dict[str, str]]) -> None:
    """Every portable film is an AP view; laterality markers are L or R."""
    assert all(r["view"] == "AP" for r in confounded_rows if r["portable"] == "1")
    assert {r["marker"] for r in confounded_rows} <= {"L", "R"}
