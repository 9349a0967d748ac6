"""The same arguments give byte-identical datasets (with any worker count); a new seed does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.phantoms.generate import SynthConfig, synthesize
from models.phantoms.scenario import Scenario


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _make(root: Path, scenario: Scenario, seed: int, workers: int) -> dict[str, bytes]:
    synthesize(
        SynthConfig(
            out=root,
            studies=8,
            seed=seed,
            scenario=scenario,
            scenario_source="confounded",
            size=96,
            syntax="mixed",
            workers=workers,
            lateral_fraction=0.5,
        )
    )
    return _files(root)


@pytest.mark.slow
def test_same_seed_same_bytes_any_workers(tmp_path: Path, confounded: Scenario) -> None:
    """Two runs with one and with two worker processes write identical files, byte for byte."""
    first = _make(tmp_path / "a", confounded, seed=5, workers=1)
    second = _make(tmp_path / "b", confounded, seed=5, workers=2)
    assert first.keys() == second.keys()
    assert {"labels.csv", "dataset.json"} <= first.keys()
    assert sum(k.endswith(".dcm") for k in first) >= 8
    assert sum(k.endswith(".npz") and "anatomy" not in k for k in first) == 8
    assert sum(k.startswith("masks/anatomy/") for k in first) == 8
    for name, content in first.items():
        assert second[name] == content, name


def test_another_seed_gives_different_files(tmp_path: Path, confounded: Scenario) -> None:
    """A different seed changes labels.csv and every image (new UIDs, patients, pixels)."""
    first = _make(tmp_path / "a", confounded, seed=5, workers=1)
    other = _make(tmp_path / "b", confounded, seed=6, workers=1)
    assert first["labels.csv"] != other["labels.csv"]
    first_dicom = {v for k, v in first.items() if k.endswith(".dcm")}
    other_dicom = {v for k, v in other.items() if k.endswith(".dcm")}
    assert not first_dicom & other_dicom
