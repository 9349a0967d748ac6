"""Labelled image tables, read without torch: the one reader of training and calibration.

Two layouts:

* a phantom folder written by ``triage synth``: ``labels.csv`` (one row per image: path,
  patient, study, SOP UID, site, view, the reported labels, the noise-free ``<label>_true`` and
  ``<label>_severity`` columns) and ``dataset.json`` (which sites are held out). A folder
  without ``dataset.json`` holds no held-out site; a missing ``view`` column means PA, a
  missing patient the study UID, a missing site ``unknown``;
* a CheXpert- or MIMIC-CXR-style CSV: a path column and one column per label (see
  :mod:`triage_common.csv_tables` for the path, patient and view columns), plus an optional
  ``site`` column (default ``csv``).

A label cell is 1, 0, -1 (uncertain) or blank ("not mentioned": negative, the CheXpert
labeller's convention). Uncertain labels follow a stated policy: ``ignore`` (U-Ignore, the
default: NaN, masked out of the loss and the metrics), ``ones`` (U-Ones) or ``zeros``
(U-Zeros). ``labels`` are the *reported* labels (what a radiologist wrote); a phantom's
noise-free ``_true`` columns are ``true_labels``. Calibration and evaluation take ``labels``,
under ``ignore``, as their truth (NaN: unknown): the defer policy is calibrated against the
labels a site can actually obtain. Only frontal images (PA/AP) are kept.

:func:`preprocessed_images` caches a table's images through the canonical preprocessing.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from triage_common.atomic import atomic_path
from triage_common.console import track
from triage_common.csv_tables import FRONTAL_VIEWS, heldout_sites, read_frontal_rows
from triage_common.labels import DEFAULT_LABELS, severity_column, truth_column
from triage_common.preprocess import PreprocessSpec, preprocess_file

UncertainPolicy = Literal["ignore", "ones", "zeros"]
_UNCERTAIN_VALUE: dict[UncertainPolicy, float] = {"ignore": float("nan"), "ones": 1.0, "zeros": 0.0}


@dataclass(frozen=True)
class ImageTable:
    """One row per frontal image; labels are NaN where masked (uncertain under U-Ignore)."""

    root: Path
    paths: tuple[Path, ...]
    label_names: tuple[str, ...]
    labels: npt.NDArray[np.float64]
    patient_ids: tuple[str, ...]
    study_uids: tuple[str, ...]
    sites: tuple[str, ...]
    views: tuple[str, ...]
    heldout: npt.NDArray[np.bool_]
    sop_uids: tuple[str, ...]
    kind: str
    description: dict[str, Any] = field(default_factory=dict)
    true_labels: npt.NDArray[np.float64] | None = None  # a phantom's noise-free ``_true``
    severity: npt.NDArray[np.float64] | None = None
    portable: npt.NDArray[np.float64] | None = None
    sexes: tuple[str, ...] = ()  # a phantom's PatientSex per row (F/M), when labels.csv has it
    ages: npt.NDArray[np.float64] | None = None  # age in years at the study, when it has it

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def heldout_sites(self) -> tuple[str, ...]:
        """The held-out sites the dataset names (sorted; a CSV: none)."""
        return tuple(self.description.get("heldout_sites", ()))

    def subset(self, index: npt.NDArray[np.int64] | Sequence[int]) -> ImageTable:
        """Rows ``index`` of this table, in that order."""
        idx = np.asarray(index, dtype=np.int64)

        def pick(seq: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(seq[i] for i in idx)

        def opt(a: npt.NDArray[np.float64] | None) -> npt.NDArray[np.float64] | None:
            return None if a is None else a[idx]

        return replace(
            self,
            paths=pick(self.paths),
            labels=self.labels[idx],
            patient_ids=pick(self.patient_ids),
            study_uids=pick(self.study_uids),
            sites=pick(self.sites),
            views=pick(self.views),
            heldout=self.heldout[idx],
            sop_uids=pick(self.sop_uids),
            true_labels=opt(self.true_labels),
            severity=opt(self.severity),
            portable=opt(self.portable),
            sexes=pick(self.sexes) if self.sexes else (),
            ages=opt(self.ages),
        )


def parse_label(cell: str | None, policy: UncertainPolicy, where: str) -> float:
    """One label cell: 1 or 0; blank is 0; -1 follows ``policy``. Errors name ``where``."""
    text = (cell or "").strip()
    if text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value == -1.0:
        return _UNCERTAIN_VALUE[policy]
    if value not in (0.0, 1.0):
        raise ValueError(f"{where}: label value {text!r} is not 1, 0, -1 or blank")
    return value


def _label_matrix(
    rows: Sequence[tuple[str, Mapping[str, str]]], names: Sequence[str], policy: UncertainPolicy
) -> npt.NDArray[np.float64]:
    """(N, L) labels of ``rows`` (each ``(where, row)``)."""
    values = [[parse_label(row[n], policy, where) for n in names] for where, row in rows]
    return np.array(values, dtype=np.float64).reshape(len(rows), len(names))


def load_phantoms(
    data: Path, label_names: Sequence[str] | None = None, *, uncertain: UncertainPolicy = "ignore"
) -> ImageTable:
    """Read ``labels.csv`` and ``dataset.json`` written by ``triage synth`` (frontal rows only)."""
    meta_path = data / "dataset.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    heldout = heldout_sites(meta)
    labels_csv = data / "labels.csv"
    with labels_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        numbered = [
            (f"{labels_csv}:{line}", r)
            for line, r in enumerate(reader, start=2)
            if r.get("view", "PA") in FRONTAL_VIEWS
        ]
    rows = [r for _, r in numbered]
    names = tuple(label_names or DEFAULT_LABELS)
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(f"{labels_csv} has no column for labels {missing}")

    def extra(column: Any) -> npt.NDArray[np.float64] | None:
        """The ``_true`` or ``_severity`` columns, when the file has them all."""
        if not all(column(n) in columns for n in names):
            return None
        values = [[float(r[column(n)]) for n in names] for r in rows]
        return np.array(values, dtype=np.float64).reshape(len(rows), len(names))

    sites = tuple(r.get("site", "") or "unknown" for r in rows)
    return ImageTable(
        root=data,
        paths=tuple(data / r["path"] for r in rows),
        label_names=names,
        labels=_label_matrix(numbered, names, uncertain),
        patient_ids=tuple(r.get("patient_id", "") or r["study_uid"] for r in rows),
        study_uids=tuple(r.get("study_uid", "") for r in rows),
        sites=sites,
        views=tuple(r.get("view", "PA") for r in rows),
        heldout=np.array([s in heldout for s in sites], dtype=bool),
        sop_uids=tuple(r.get("sop_uid", "") for r in rows),
        kind="phantom",
        description={
            "kind": "phantom",
            "path": str(data),
            "scenario": meta.get("scenario", {}).get("name"),
            "seed": meta.get("seed"),
            "heldout_sites": list(heldout),
        },
        true_labels=extra(truth_column),
        severity=extra(severity_column),
        portable=np.array([float(r.get("portable", "nan") or "nan") for r in rows]),
        sexes=tuple(r["sex"] for r in rows) if "sex" in columns else (),
        ages=np.array([float(r["age"]) for r in rows]) if "age" in columns else None,
    )


def load_csv_dataset(
    csv_path: Path,
    label_names: Sequence[str] | None = None,
    *,
    image_root: Path | None = None,
    uncertain: UncertainPolicy = "ignore",
) -> ImageTable:
    """A CheXpert- or MIMIC-CXR-style CSV: a path column and label columns (1, 0, -1, blank).

    The patient comes from a ``patient_id``/``subject_id`` column or from the path
    (``patient00001`` in CheXpert, ``p10000032`` in MIMIC-CXR); the view from ``Frontal/Lateral``
    plus ``AP/PA`` (CheXpert) or ``ViewPosition`` (MIMIC-CXR); lateral rows are dropped. The
    study from a ``study_id`` column or the image's folder; the site from a ``site`` column
    (``csv`` where there is none or the cell is blank).
    """
    root = image_root or csv_path.parent
    columns, rows = read_frontal_rows(csv_path)
    names = tuple(label_names or [n for n in DEFAULT_LABELS if n in columns])
    if not names:
        raise ValueError(f"{csv_path} has no column for labels {list(DEFAULT_LABELS)}")
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(f"{csv_path} has no column for labels {missing}")
    labels = _label_matrix([(f"{csv_path}:{r.line}", r.row) for r in rows], names, uncertain)
    n = len(rows)
    return ImageTable(
        root=root,
        paths=tuple(root / r.path for r in rows),
        label_names=names,
        labels=labels,
        patient_ids=tuple(r.patient for r in rows),
        study_uids=tuple(r.row.get("study_id") or str(Path(r.path).parent) for r in rows),
        sites=tuple((r.row.get("site") or "").strip() or "csv" for r in rows),
        views=tuple("frontal" for _ in rows),
        heldout=np.zeros(n, dtype=bool),
        sop_uids=tuple("" for _ in rows),
        kind="csv",
        description={"kind": "csv", "path": str(csv_path), "uncertain_policy": uncertain},
    )


def load_dataset(
    data: Path,
    label_names: Sequence[str] | None = None,
    *,
    uncertain: UncertainPolicy = "ignore",
    image_root: Path | None = None,
) -> ImageTable:
    """A phantom folder (``labels.csv`` inside) or a CheXpert/MIMIC-style ``.csv`` file."""
    if data.is_dir() and (data / "labels.csv").exists():
        return load_phantoms(data, label_names, uncertain=uncertain)
    if data.is_file() and data.suffix.lower() == ".csv":
        return load_csv_dataset(data, label_names, image_root=image_root, uncertain=uncertain)
    raise ValueError(
        f"{data} is neither a phantom dataset folder (with labels.csv) nor a .csv file"
    )


def _cache_key(table: ImageTable, spec: PreprocessSpec) -> str:
    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for p in table.paths:
        h.update(str(p).encode())
    return h.hexdigest()[:20]


def preprocessed_images(
    table: ImageTable, spec: PreprocessSpec, cache_dir: Path | None = None
) -> npt.NDArray[np.float32]:
    """All images of ``table`` through the canonical preprocessing, as (N, 1, S, S) float32.

    With ``cache_dir`` the array is stored once as ``.npy`` (atomically) and reused next time.
    """
    cache = None if cache_dir is None else cache_dir / f"prep-{_cache_key(table, spec)}.npy"
    if cache is not None and cache.exists():
        cached: npt.NDArray[np.float32] = np.load(cache)
        return cached
    out = np.empty((len(table), 1, spec.size, spec.size), dtype=np.float32)
    for i, path in enumerate(track(table.paths, len(table), f"preprocess {spec.size}px")):
        out[i] = preprocess_file(path, spec)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, tmp.open("wb") as fh:
            np.save(fh, out)
    return out
