"""The model bundle as the service sees it: verified once at start-up, then plain values.

``triage_common.bundle_format.read_manifest`` checks the format, the bundle id and the sha256 of
every file; a bundle that fails is refused (the server does not start). This module then pulls
out what serving needs and checks it is self-consistent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from triage_common.bundle_format import INPUT, MODEL_FILE, OUTPUTS, BundleError, read_manifest
from triage_common.preprocess import PreprocessSpec


@dataclass(frozen=True)
class Bundle:
    """Everything the service reads from a verified bundle."""

    path: Path
    bundle_id: str
    labels: tuple[str, ...]
    thresholds: npt.NDArray[np.float64]  # per label, in label order
    spec: PreprocessSpec
    in_channels: int
    cam_shape: tuple[int, int]
    ood_threshold: float
    defer_cost: float
    model_file: Path
    input_name: str
    manifest: dict[str, Any]


def _thresholds(raw: Any, labels: tuple[str, ...]) -> npt.NDArray[np.float64]:
    if isinstance(raw, dict):
        missing = [label for label in labels if label not in raw]
        if missing:
            raise BundleError(f"manifest thresholds lack labels {missing}")
        values = [float(raw[label]) for label in labels]
    elif isinstance(raw, list) and len(raw) == len(labels):
        values = [float(v) for v in raw]
    else:
        raise BundleError("manifest thresholds must map every label to a threshold")
    if not all(0.0 <= v <= 1.0 for v in values):
        raise BundleError("manifest thresholds must lie within [0, 1]")
    return np.asarray(values, dtype=np.float64)


def load_bundle(path: Path) -> Bundle:
    """Verify ``path`` and return its serving view; raises ``BundleError`` naming the problem."""
    manifest = read_manifest(path)
    try:
        labels = tuple(str(label) for label in manifest["labels"])
        spec = PreprocessSpec.from_dict(dict(manifest["preprocess"]))
        model_info = manifest.get("model", {})
        model_file = path / str(model_info.get("file", MODEL_FILE))
        input_info = manifest.get("input", {})
        shape = list(input_info.get("shape", ["batch", 1, spec.size, spec.size]))
        in_channels = int(shape[1])
        cam = manifest["cam"]
        cam_shape = (int(cam["shape"][0]), int(cam["shape"][1]))
        ood = manifest.get("ood") or {}
        raw_ood = ood.get("threshold")
        ood_threshold = math.inf if raw_ood is None else float(raw_ood)
        defer_cost = float(manifest["defer_cost"])
        thresholds = _thresholds(manifest["thresholds"], labels)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{path}: manifest is missing or has a malformed key ({exc})") from exc
    if not labels:
        raise BundleError(f"{path}: the manifest lists no labels")
    if not 0.0 <= defer_cost <= 1.0:
        raise BundleError(f"{path}: defer_cost {defer_cost} is outside [0, 1]")
    if model_file.name not in manifest["files"]:
        raise BundleError(f"{path}: {model_file.name} is not among the hashed bundle files")
    if in_channels != 1:
        raise BundleError(
            f"{path}: the service feeds 1-channel images, the model wants {in_channels}"
        )
    outputs = manifest.get("outputs", {})
    if isinstance(outputs, dict) and outputs and set(OUTPUTS) - set(outputs):
        raise BundleError(f"{path}: the model lacks outputs {sorted(set(OUTPUTS) - set(outputs))}")
    return Bundle(
        path=path,
        bundle_id=str(manifest["bundle_id"]),
        labels=labels,
        thresholds=thresholds,
        spec=spec,
        in_channels=in_channels,
        cam_shape=cam_shape,
        ood_threshold=ood_threshold,
        defer_cost=defer_cost,
        model_file=model_file,
        input_name=str(input_info.get("name", INPUT)),
        manifest=manifest,
    )
