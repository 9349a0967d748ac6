"""The model bundle's on-disk format, shared by the exporter (writes) and the service (reads).

A bundle is a directory holding the ONNX file(s) and ``manifest.json``. The manifest lists the
sha256 of every file. The bundle id is a sha256 prefix over the canonical JSON of the manifest's
content keys (:data:`ID_KEYS`: the files' hashes and every field the service decides with), so
any change to a file or to a decision-relevant field changes it, while provenance (the export
time, the runs' paths and metrics, library versions) and the measured parity do not: the same
runs exported twice give the same id. Format 1 manifests (id over the whole manifest) still read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "cxr-triage/bundle/2"
#: Formats :func:`read_manifest` accepts (1: the bundle id covers the whole manifest).
READABLE_FORMATS = ("cxr-triage/bundle/1", BUNDLE_FORMAT)
#: The manifest keys the bundle id of a format-2 manifest covers.
ID_KEYS = (
    "format",
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
    "files",
)
BUNDLE_ID_HEX = 16

# The bundle's ONNX graph, defined once for the exporter, the service and its batcher: the
# file name, the input tensor and the output tensors (in the graph's output order).
MODEL_FILE = "triage.onnx"
INPUT = "image"  # float32 [batch, 1, S, S], the canonical preprocessing's output
PROBABILITIES = "probabilities"  # [batch, L] sigmoid of the classifier's logits
CAMS = "cams"  # [batch, L, h, w] Grad-CAM map per label (CAM layer resolution)
OOD_SCORE = "ood_score"  # [batch] Mahalanobis distance of the pooled features
P_ERROR = "p_error"  # [batch] the error model's P(the classifier is wrong on the study)
P_ERROR_LABELS = "p_error_labels"  # [batch, L] the error model's per-label P(wrong)
OUTPUTS = (PROBABILITIES, CAMS, OOD_SCORE, P_ERROR, P_ERROR_LABELS)


class BundleError(ValueError):
    """The bundle is missing, malformed, or its files do not match their hashes."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical_json(payload: dict[str, Any]) -> bytes:
    """The bytes the bundle id is computed over."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")


def compute_bundle_id(manifest: dict[str, Any]) -> str:
    """sha256 prefix over the manifest's :data:`ID_KEYS` (format 1: all keys but the id)."""
    if manifest.get("format") == BUNDLE_FORMAT:
        body = {k: manifest[k] for k in ID_KEYS if k in manifest}
    else:
        body = {k: v for k, v in manifest.items() if k != "bundle_id"}
    return hashlib.sha256(canonical_json(body)).hexdigest()[:BUNDLE_ID_HEX]


def read_manifest(bundle: Path) -> dict[str, Any]:
    """Read and verify a bundle: format, bundle id, and the sha256 of every listed file.

    Raises :class:`BundleError` naming the first file that is missing or does not match.
    """
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} is not a model bundle: {MANIFEST} is missing")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") not in READABLE_FORMATS:
        raise BundleError(f"{path}: unsupported format {manifest.get('format')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path}: the manifest lists no files")
    for name, entry in sorted(files.items()):
        file_path = bundle / name
        if not file_path.is_file():
            raise BundleError(f"bundle file {name} is missing from {bundle}")
        if sha256_file(file_path) != entry.get("sha256"):
            raise BundleError(f"bundle file {name} does not match its sha256 in {MANIFEST}")
    if manifest.get("bundle_id") != compute_bundle_id(manifest):
        raise BundleError(f"{path}: bundle_id does not match the manifest contents")
    return manifest
