"""Label tables shared by training and calibration: CheXpert / MIMIC-CXR style CSVs, and the
held-out sites of a phantom folder's ``dataset.json``.

A path column; the patient from a ``patient_id``/``subject_id`` column or from the path
(``patient00001`` in CheXpert, ``p10000032`` in MIMIC-CXR); frontal rows only (``Frontal/Lateral``
plus ``AP/PA`` in CheXpert, ``ViewPosition`` in MIMIC-CXR).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRONTAL_VIEWS = ("PA", "AP")
PATH_COLUMNS = ("path", "Path", "image_path", "filename")
PATIENT_COLUMNS = ("patient_id", "subject_id", "PatientID")
_PATIENT_IN_PATH = re.compile(r"(patient\d+|p\d{8})")


@dataclass(frozen=True)
class FrontalRow:
    """One frontal row with its CSV line number and its patient."""

    line: int
    row: Mapping[str, str]
    path: str
    patient: str


def read_frontal_rows(
    csv_path: Path, required: Sequence[str] = ()
) -> tuple[list[str], list[FrontalRow]]:
    """(columns, frontal rows) of a label CSV; errors name the file, the line and the reason."""
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    path_col = next((c for c in PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise ValueError(f"{csv_path} has no path column (one of {', '.join(PATH_COLUMNS)})")
    missing = [name for name in required if name not in columns]
    if missing:
        raise ValueError(f"{csv_path} has no column for labels {missing}")
    patient_col = next((c for c in PATIENT_COLUMNS if c in columns), None)
    out = []
    for line, row in enumerate(rows, start=2):
        if (row.get("Frontal/Lateral") or "Frontal").strip() != "Frontal":
            continue
        view = (row.get("ViewPosition") or row.get("AP/PA") or "").strip().upper()
        if "ViewPosition" in row and view not in FRONTAL_VIEWS:
            continue
        if patient_col is not None:
            patient = row[patient_col].strip()
        else:
            found = _PATIENT_IN_PATH.search(row[path_col])
            if found is None:
                raise ValueError(f"{csv_path}:{line}: cannot tell the patient from the path")
            patient = found.group(1)
        out.append(FrontalRow(line, row, row[path_col], patient))
    return columns, out


def heldout_sites(meta: dict[str, Any]) -> tuple[str, ...]:
    """The held-out sites a phantom folder's ``dataset.json`` names (sorted; none: empty)."""
    sites = meta.get("scenario", {}).get("sites", [])
    items = sites.items() if isinstance(sites, dict) else ((s.get("name"), s) for s in sites)
    return tuple(sorted(str(name) for name, s in items if isinstance(s, dict) and s.get("heldout")))
