"""Reading and writing training runs: ``classifier.pt`` + ``classifier.json``, ``split.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.densenet import DenseNet, DenseNetConfig
from models.splits import PARTS, SplitFractions, assign_patients
from triage_common.console import write_json
from triage_common.datasets import ImageTable
from triage_common.preprocess import PreprocessSpec

CLASSIFIER_FORMAT = "cxr-triage/classifier/1"


@dataclass(frozen=True)
class ClassifierRun:
    """A trained classifier and the metadata that travels with its weights."""

    model: DenseNet
    meta: dict[str, Any]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.meta["labels"])

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])

    @property
    def thresholds(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.meta["thresholds"], dtype=np.float64)


def densenet_config_from_meta(arch: dict[str, Any]) -> DenseNetConfig:
    """Rebuild the architecture recorded in ``classifier.json``."""
    fields = {k: v for k, v in arch.items() if k != "name"}
    fields["block_config"] = tuple(fields["block_config"])
    return DenseNetConfig(**fields)


def load_classifier_run(run: Path) -> ClassifierRun:
    """Load ``classifier.json`` + ``classifier.pt`` from a run folder."""
    meta_path, weights_path = run / "classifier.json", run / "classifier.pt"
    for path in (meta_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: is {run} a `triage train classifier` run?")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r}")
    model = DenseNet(densenet_config_from_meta(meta["architecture"]))
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    model.eval()
    return ClassifierRun(model, meta)


def make_split(table: ImageTable, fractions: SplitFractions, seed: int) -> dict[str, Any]:
    """The patient-disjoint split of ``table`` as a JSON-able record."""
    parts = assign_patients(table.patient_ids, list(table.heldout), fractions, seed)
    patients = dict(zip(table.patient_ids, parts, strict=True))
    counts = {
        part: {
            "patients": sum(1 for p in set(patients) if patients[p] == part),
            "images": sum(1 for q in parts if q == part),
        }
        for part in PARTS
    }
    return {
        "fractions": {
            "classifier": fractions.classifier,
            "error_model": fractions.error_model,
            "test": fractions.test,
            "classifier_val": fractions.classifier_val,
        },
        "seed": seed,
        "counts": counts,
        "patients": patients,
    }


def split_indices(table: ImageTable, split: dict[str, Any], part: str) -> npt.NDArray[np.int64]:
    """Row indices of ``table`` whose patient belongs to ``part`` (unknown patients: none)."""
    patients: dict[str, str] = split["patients"]
    return np.array(
        [i for i, p in enumerate(table.patient_ids) if patients.get(p) == part], dtype=np.int64
    )


def write_split(run: Path, split: dict[str, Any]) -> None:
    """Record the split with the run."""
    write_json(run / "split.json", split)


def read_split(run: Path) -> dict[str, Any]:
    """The split recorded with a classifier run."""
    path = run / "split.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the classifier run records its split there")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
