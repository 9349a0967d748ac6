"""Scenario files are validated with errors that name the offending key."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from models.phantoms.scenario import (
    SCENARIO_DIR,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
)
from triage_tools.cli import main


@pytest.fixture(name="raw_scenario")
def fixture_raw_scenario() -> dict[str, Any]:
    """The built-in confounded scenario as parsed JSON, ready to be broken."""
    data: dict[str, Any] = json.loads((SCENARIO_DIR / "confounded.json").read_text())
    return data


def test_builtin_scenarios_load_and_resolve() -> None:
    """Both built-in scenarios load; the confounded one has one held-out site among several."""
    assert {"confounded", "balanced"} <= set(builtin_scenarios())
    confounded = load_scenario("confounded")
    assert sum(s.heldout for s in confounded.sites) == 1 and len(confounded.sites) >= 3
    resolved = confounded.to_dict()
    assert resolved["sites"][0]["acquisition"]["collimation_margin"] == [0.01, 0.04]
    assert parse_scenario(json.loads(json.dumps(resolved)), "resolved") == confounded


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["sites"][1].update(prevalance={}), "sites[1].prevalance"),
        (lambda d: d["sites"][0]["prevalence"].update(Edema="often"), "sites[0].prevalence.Edema"),
        (
            lambda d: d["sites"][2]["portable"].pop("given_finding"),
            "sites[2].portable.given_finding",
        ),
        (lambda d: d["sites"][0].update(bits_stored=14), "sites[0].bits_stored"),
        (lambda d: d["sites"][0].update(photometric="RGB"), "sites[0].photometric"),
        (lambda d: d["sites"][3]["acquisition"].update(noise=-1), "sites[3].acquisition.noise"),
        (lambda d: d["correlations"].update(Pneumonia={"Edema": 0.1}), "correlations.Pneumonia"),
        (lambda d: d["label_noise"].update(miss_at_zero=2), "label_noise.miss_at_zero"),
        (lambda d: d.pop("name"), "name"),
        (lambda d: d["sites"][0]["marker_label"].update(text="X"), "sites[0].marker_label.text"),
    ],
)
def test_bad_scenario_error_names_the_key(
    raw_scenario: dict[str, Any], mutate: Any, key: str
) -> None:
    """Unknown, missing, mistyped or out-of-range keys raise a ScenarioError naming the key."""
    data = copy.deepcopy(raw_scenario)
    mutate(data)
    with pytest.raises(ScenarioError, match=re.escape(f"'{key}'")):
        parse_scenario(data, "broken.json")


def test_impossible_correlations_are_rejected(raw_scenario: dict[str, Any]) -> None:
    """Correlations that cannot form a correlation matrix are refused, naming 'correlations'."""
    data = copy.deepcopy(raw_scenario)
    data["correlations"] = {
        "Edema": {"Cardiomegaly": 0.9, "Pleural Effusion": 0.9},
        "Cardiomegaly": {"Pleural Effusion": -0.9},
    }
    with pytest.raises(ScenarioError, match="'correlations'"):
        parse_scenario(data, "broken.json")


def test_synth_reports_a_bad_scenario_file(
    tmp_path: Path, raw_scenario: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`triage synth --scenario bad.json` exits 2 with a message naming the file and key."""
    data = copy.deepcopy(raw_scenario)
    data["sites"][0]["weigth"] = 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert main(["synth", str(tmp_path / "out"), "--scenario", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "sites[0].weigth" in err
    assert not (tmp_path / "out").exists()


def test_unknown_builtin_name_lists_the_choices() -> None:
    """An unknown scenario name says which built-in names exist."""
    with pytest.raises(ScenarioError, match="confounded"):
        load_scenario("confunded")
