"""Helpers shared by the phantom tests: the small dataset's parameters and accessors."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from models.phantoms.scenario import Scenario
from models.phantoms.study import StudySpec

SMALL_SIZE = 128
SMALL_STUDIES = 18
SMALL_SEED = 7
SMALL_LATERAL = 0.6


@dataclass(frozen=True)
class SmallDataset:
    """A dataset written by ``synthesize`` plus the specs it was rendered from."""

    root: Path
    rows: list[dict[str, str]]
    specs: list[StudySpec]
    scenario: Scenario

    def spec_for(self, sop_uid: str) -> StudySpec:
        """The study spec that produced the image ``sop_uid``."""
        for spec in self.specs:
            if sop_uid in (spec.frontal_sop_uid, spec.lateral_sop_uid):
                return spec
        raise KeyError(sop_uid)


def read_rows(root: Path) -> list[dict[str, str]]:
    """The rows of ``labels.csv``."""
    with (root / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))
