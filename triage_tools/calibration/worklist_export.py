"""Reading a labelled worklist export (``triage worklist export --labelled``) as a calibration set.

The export is JSON lines, one completed study per line::

    {"study_uid_hash": "9f2c...", "bundle_id": "a99100bd9163a969", "site": "Northgate General",
     "labels": ["Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax"],
     "probabilities": [0.81, 0.12, 0.40, 0.03], "p_error_raw": 0.27, "ood_score": 41.5,
     "final_labels": {"Cardiomegaly": true, "Edema": false, "Pleural Effusion": false,
                      "Pneumothorax": false}}

``probabilities`` are in the order of ``labels``; ``final_labels`` are the radiologist's reads
(a label missing from it is unknown). ``p_error_raw`` is the error model's output before any
recalibration. Lines of another bundle are refused (counted and named); blank lines are skipped.
There are no patient ids in the export, so each study is its own unit.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Bundle
from triage_tools.calibration.calibrate import CalibrationSet

REQUIRED_KEYS = (
    "study_uid_hash",
    "bundle_id",
    "site",
    "labels",
    "probabilities",
    "p_error_raw",
    "ood_score",
    "final_labels",
)


class ExportError(ValueError):
    """The export is malformed or holds no usable line for this bundle."""


@dataclass(frozen=True)
class ExportRead:
    """The calibration set and the lines that were refused."""

    cal: CalibrationSet
    other_bundles: dict[str, int]  # bundle id -> refused lines

    @property
    def refused(self) -> int:
        """Lines refused because another bundle produced them."""
        return sum(self.other_bundles.values())


def _number(value: Any, where: str, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExportError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def read_worklist_export(path: Path, bundle: Bundle) -> ExportRead:
    """Parse ``path``; keep the lines made by ``bundle``, refuse the others by count."""
    labels = bundle.labels
    others: Counter[str] = Counter()
    probs: list[list[float]] = []
    truth: list[list[float]] = []
    p_error: list[float] = []
    ood: list[float] = []
    sites: list[str] = []
    studies: list[str] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExportError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise ExportError(f"{where}: each line must be a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in item]
        if missing:
            raise ExportError(f"{where}: missing keys {missing}")
        if str(item["bundle_id"]) != bundle.bundle_id:
            others[str(item["bundle_id"])] += 1
            continue
        line_labels = [str(x) for x in item["labels"]]
        values = item["probabilities"]
        if not isinstance(values, list) or len(values) != len(line_labels):
            raise ExportError(f"{where}: probabilities must be a list, one per label")
        if sorted(line_labels) != sorted(labels):
            raise ExportError(f"{where}: labels {line_labels} are not the bundle's {list(labels)}")
        by_label = {
            n: _number(v, where, "probabilities") for n, v in zip(line_labels, values, strict=True)
        }
        final = item["final_labels"]
        if not isinstance(final, dict):
            raise ExportError(f"{where}: final_labels must map label names to true/false")
        unknown = sorted(set(final) - set(labels))
        if unknown:
            raise ExportError(f"{where}: final_labels has labels {unknown} the bundle lacks")
        row = []
        for name in labels:
            value = final.get(name)
            if value is None:
                row.append(math.nan)
            elif isinstance(value, bool):
                row.append(1.0 if value else 0.0)
            else:
                raise ExportError(f"{where}: final_labels[{name!r}] must be true, false or null")
        probs.append([by_label[n] for n in labels])
        truth.append(row)
        p_error.append(_number(item["p_error_raw"], where, "p_error_raw"))
        ood.append(_number(item["ood_score"], where, "ood_score"))
        sites.append(str(item["site"]) or "unknown")
        studies.append(str(item["study_uid_hash"]))
    if not p_error:
        detail = (
            f"all {sum(others.values())} lines were made by other bundles "
            f"({', '.join(f'{b}: {n}' for b, n in others.items())})"
            if others
            else "it holds no study"
        )
        raise ExportError(f"{path}: nothing to calibrate bundle {bundle.bundle_id} with: {detail}")
    n, n_labels = len(p_error), len(labels)
    cal = CalibrationSet(
        labels=labels,
        thresholds=np.asarray(bundle.thresholds, dtype=np.float64),
        probabilities=np.asarray(probs, dtype=np.float64).reshape(n, n_labels),
        p_error_raw=np.asarray(p_error, dtype=np.float64),
        ood_score=np.asarray(ood, dtype=np.float64),
        truth=np.asarray(truth, dtype=np.float64).reshape(n, n_labels),
        sites=tuple(sites),
        source=str(path),
        patient_ids=tuple(studies),
    )
    return ExportRead(cal, dict(others))
