"""Labelled image sets for calibration and evaluation, read without torch or ``models``.

Two layouts:

* a phantom folder written by ``triage synth``: ``labels.csv`` (one row per image, with the
  reported labels, the noise-free ``<label>_true`` columns, site, patient, SOP UID) and
  ``dataset.json`` (which sites are held out);
* a CheXpert- or MIMIC-CXR-style CSV: a path column (``path``/``Path``/``image_path``/
  ``filename``) and one column per label holding 1, 0, -1 (uncertain: unknown here) or blank
  (not mentioned: negative). Patient from ``patient_id``/``subject_id``/``PatientID`` or the path
  (``patient00001``, ``p10000032``); site from a ``site`` column when there is one.

Truth is the *reported* label (what a radiologist wrote), never the phantom's ``_true``
column: the defer policy is calibrated against the labels a site can actually obtain. Only
frontal images (PA/AP) are kept.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from triage_common.csv_tables import FRONTAL_VIEWS, heldout_sites, read_frontal_rows


@dataclass(frozen=True)
class LabelledSet:
    """One row per frontal image; ``truth`` is NaN where the label is unknown."""

    root: Path
    kind: str  # "phantom" or "csv"
    paths: tuple[Path, ...]
    label_names: tuple[str, ...]
    truth: npt.NDArray[np.float64]  # (N, L)
    patient_ids: tuple[str, ...]
    sites: tuple[str, ...]
    sop_uids: tuple[str, ...]
    heldout_sites: tuple[str, ...] = ()
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


def _cell(value: str | None, policy_uncertain: float, where: str) -> float:
    text = (value or "").strip()
    if text == "":
        return 0.0
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{where}: label value {text!r} is not 1, 0, -1 or blank") from None
    if number == -1.0:
        return policy_uncertain
    if number not in (0.0, 1.0):
        raise ValueError(f"{where}: label value {text!r} is not 1, 0, -1 or blank")
    return number


def read_phantoms(folder: Path, labels: tuple[str, ...]) -> LabelledSet:
    """A ``triage synth`` folder: frontal rows of ``labels.csv``, reported labels as truth."""
    meta_path = folder / "dataset.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    with (folder / "labels.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        rows = [r for r in reader if r.get("view", "PA") in FRONTAL_VIEWS]
    missing = [name for name in labels if name not in columns]
    if missing:
        raise ValueError(f"{folder / 'labels.csv'} has no column for the bundle's labels {missing}")
    truth = np.array(
        [
            [_cell(r[n], np.nan, f"labels.csv row {i + 2}") for n in labels]
            for i, r in enumerate(rows)
        ],
        dtype=np.float64,
    ).reshape(len(rows), len(labels))
    heldout = heldout_sites(meta)
    return LabelledSet(
        root=folder,
        kind="phantom",
        paths=tuple(folder / r["path"] for r in rows),
        label_names=labels,
        truth=truth,
        patient_ids=tuple(r.get("patient_id", "") or r["study_uid"] for r in rows),
        sites=tuple(r.get("site", "") or "unknown" for r in rows),
        sop_uids=tuple(r.get("sop_uid", "") for r in rows),
        heldout_sites=heldout,
        description={
            "kind": "phantom",
            "path": str(folder),
            "scenario": meta.get("scenario", {}).get("name"),
            "seed": meta.get("seed"),
            "heldout_sites": list(heldout),
        },
    )


def read_csv(
    csv_path: Path, labels: tuple[str, ...], image_root: Path | None = None
) -> LabelledSet:
    """A CheXpert/MIMIC-style CSV (frontal rows; -1 is unknown, blank is negative)."""
    root = image_root or csv_path.parent
    _, rows = read_frontal_rows(csv_path, labels)
    paths: list[Path] = []
    patients: list[str] = []
    sites: list[str] = []
    truth: list[list[float]] = []
    for item in rows:
        truth.append([_cell(item.row[n], np.nan, f"{csv_path}:{item.line}") for n in labels])
        paths.append(root / item.path)
        patients.append(item.patient)
        sites.append((item.row.get("site") or "").strip() or "csv")
    return LabelledSet(
        root=root,
        kind="csv",
        paths=tuple(paths),
        label_names=labels,
        truth=np.array(truth, dtype=np.float64).reshape(len(paths), len(labels)),
        patient_ids=tuple(patients),
        sites=tuple(sites),
        sop_uids=tuple("" for _ in paths),
        description={"kind": "csv", "path": str(csv_path), "uncertain": "unknown (masked)"},
    )


def read_labelled_set(
    data: Path, labels: tuple[str, ...], image_root: Path | None = None
) -> LabelledSet:
    """A phantom folder (``labels.csv`` inside) or a CheXpert/MIMIC-style ``.csv`` file."""
    if data.is_dir() and (data / "labels.csv").exists():
        return read_phantoms(data, labels)
    if data.is_file() and data.suffix.lower() == ".csv":
        return read_csv(data, labels, image_root)
    raise ValueError(
        f"{data} is neither a phantom dataset folder (with labels.csv) nor a .csv file"
    )
