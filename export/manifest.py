"""Writing the bundle manifest; the service reads it with ``bundle_format.read_manifest``.

The manifest is written last and atomically (temporary file, fsync, rename): a bundle folder
either has a complete manifest whose hashes cover every file, or none at all. The bundle id
covers the content keys only (``bundle_format.ID_KEYS``); the export time lives in
``provenance.created``, outside the id, so re-exporting the same runs gives the same id.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from triage_common.atomic import atomic_write_text
from triage_common.bundle_format import BUNDLE_FORMAT, MANIFEST, compute_bundle_id, sha256_file

#: The keys every manifest has, in the order they are written.
MANIFEST_KEYS = (
    "format",
    "bundle_id",
    "model",
    "labels",
    "input",
    "outputs",
    "preprocess",
    "thresholds",
    "threshold_rule",
    "cam",
    "error_model",
    "ood",
    "defer_cost",
    "provenance",
    "parity",
    "files",
)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def file_entries(bundle: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {sha256, bytes}}`` for files of the bundle (names relative to it)."""
    return {
        name: {"sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}
        for name in sorted(names)
    }


def json_clean(value: Any) -> Any:
    """Plain JSON types with non-finite floats (NaN AUROCs of one-class groups) as null."""
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return json_clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _jsonable(payload: Any) -> Any:
    """Round-trip through JSON so the bundle id is computed over exactly what is written."""
    return json.loads(json.dumps(json_clean(payload), allow_nan=False))


def finalise_manifest(body: dict[str, Any], bundle: Path, files: Iterable[str]) -> dict[str, Any]:
    """``body`` plus ``format``, ``files`` and ``bundle_id``, in :data:`MANIFEST_KEYS` order."""
    manifest: dict[str, Any] = {
        **body,
        "format": BUNDLE_FORMAT,
        "files": file_entries(bundle, files),
    }
    missing = [k for k in MANIFEST_KEYS if k != "bundle_id" and k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks keys {missing}")
    manifest.pop("bundle_id", None)
    ordered = {k: manifest[k] for k in MANIFEST_KEYS if k in manifest}
    ordered.update({k: v for k, v in manifest.items() if k not in ordered})
    ordered = _jsonable(ordered)
    ordered["bundle_id"] = compute_bundle_id(ordered)
    return {k: ordered[k] for k in (*MANIFEST_KEYS, *ordered) if k in ordered}


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically into ``bundle``; returns its path."""
    path = bundle / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return path


def swap_in(staging: Path, out: Path) -> None:
    """Move a finished staging folder to ``out``; an earlier ``out`` is renamed aside first and
    removed only once the new one is in place, so a crash never leaves neither."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
