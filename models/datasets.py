"""Labelled image tables: phantom datasets (``triage synth``) and CheXpert / MIMIC-CXR style CSVs.

Uncertain labels (-1 in CheXpert-style CSVs) follow a stated policy: ``ignore`` (U-Ignore,
the default: the label is masked out of the loss and the metrics), ``ones`` (U-Ones) or
``zeros`` (U-Zeros). A blank cell means "not mentioned" and counts as negative (0), as in the
CheXpert labeller's convention. Only frontal images (PA/AP) are used for training.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from triage_common.console import track
from triage_common.csv_tables import FRONTAL_VIEWS, heldout_sites, read_frontal_rows
from triage_common.labels import DEFAULT_LABELS, severity_column, truth_column
from triage_common.preprocess import PreprocessSpec, preprocess_file

UncertainPolicy = Literal["ignore", "ones", "zeros"]


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
    truth: npt.NDArray[np.float64] | None = None
    severity: npt.NDArray[np.float64] | None = None
    portable: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.paths)

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
            truth=opt(self.truth),
            severity=opt(self.severity),
            portable=opt(self.portable),
        )


def _parse_label(cell: str, policy: UncertainPolicy) -> float:
    text = cell.strip()
    if text == "":
        return 0.0
    value = float(text)
    if value == -1.0:
        return {"ignore": float("nan"), "ones": 1.0, "zeros": 0.0}[policy]
    if value not in (0.0, 1.0):
        raise ValueError(f"label value {cell!r} is not one of 1, 0, -1 or blank")
    return value


def load_phantoms(data: Path, label_names: Sequence[str] | None = None) -> ImageTable:
    """Read ``labels.csv`` and ``dataset.json`` written by ``triage synth`` (frontal rows only)."""
    meta = json.loads((data / "dataset.json").read_text())
    heldout = set(heldout_sites(meta))
    with (data / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["view"] in FRONTAL_VIEWS]
    names = tuple(label_names or DEFAULT_LABELS)
    missing = [n for n in names if rows and n not in rows[0]]
    if missing:
        raise ValueError(f"{data / 'labels.csv'} has no column for labels {missing}")

    def matrix(column: Any) -> npt.NDArray[np.float64]:
        return np.array([[float(r[column(n)]) for n in names] for r in rows], dtype=np.float64)

    return ImageTable(
        root=data,
        paths=tuple(data / r["path"] for r in rows),
        label_names=names,
        labels=matrix(lambda n: n).reshape(len(rows), len(names)),
        patient_ids=tuple(r["patient_id"] for r in rows),
        study_uids=tuple(r["study_uid"] for r in rows),
        sites=tuple(r["site"] for r in rows),
        views=tuple(r["view"] for r in rows),
        heldout=np.array([r["site"] in heldout for r in rows], dtype=bool),
        sop_uids=tuple(r["sop_uid"] for r in rows),
        kind="phantom",
        description={
            "kind": "phantom",
            "path": str(data),
            "scenario": meta.get("scenario", {}).get("name"),
            "seed": meta.get("seed"),
            "heldout_sites": sorted(heldout),
        },
        truth=matrix(truth_column).reshape(len(rows), len(names)),
        severity=matrix(severity_column).reshape(len(rows), len(names)),
        portable=np.array([float(r.get("portable", "nan") or "nan") for r in rows]),
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
    plus ``AP/PA`` (CheXpert) or ``ViewPosition`` (MIMIC-CXR); lateral rows are dropped.
    """
    root = image_root or csv_path.parent
    columns, rows = read_frontal_rows(csv_path)
    names = tuple(label_names or [n for n in DEFAULT_LABELS if n in columns])
    missing = [n for n in names if n not in columns]
    if missing or not names:
        raise ValueError(f"{csv_path} lacks label columns {missing or list(DEFAULT_LABELS)}")
    kept: list[tuple[str, str, str]] = []
    label_rows: list[list[float]] = []
    for item in rows:
        try:
            label_rows.append([_parse_label(item.row[n], uncertain) for n in names])
        except ValueError as exc:
            raise ValueError(f"{csv_path}:{item.line}: {exc}") from exc
        study = item.row.get("study_id") or str(Path(item.path).parent)
        kept.append((item.path, item.patient, study))
    n = len(kept)
    return ImageTable(
        root=root,
        paths=tuple(root / p for p, _, _ in kept),
        label_names=names,
        labels=np.array(label_rows, dtype=np.float64).reshape(n, len(names)),
        patient_ids=tuple(p for _, p, _ in kept),
        study_uids=tuple(s for _, _, s in kept),
        sites=tuple("csv" for _ in kept),
        views=tuple("frontal" for _ in kept),
        heldout=np.zeros(n, dtype=bool),
        sop_uids=tuple("" for _ in kept),
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
    """A phantom folder (with ``labels.csv`` + ``dataset.json``) or a CheXpert/MIMIC-style CSV."""
    if data.is_dir() and (data / "labels.csv").exists() and (data / "dataset.json").exists():
        return load_phantoms(data, label_names)
    if data.is_file() and data.suffix.lower() == ".csv":
        return load_csv_dataset(data, label_names, image_root=image_root, uncertain=uncertain)
    raise ValueError(
        f"{data} is neither a phantom dataset folder (labels.csv + dataset.json) nor a .csv file"
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

    With ``cache_dir`` the array is stored once as ``.npy`` and reused on the next run.
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
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache)
    return out
