"""Parity of the exported graph under ONNX Runtime (optimisation ALL, CPU) against PyTorch.

Inputs are preprocessed frontal images of the classifier's own dataset when its folder is still
there, else deterministic synthetic images (half smooth blobs and gradients, half noise) pushed
through the same :func:`triage_common.preprocess.preprocess`. ONNX Runtime runs them at batch 1
and at larger batches; PyTorch runs them once.

Measures (each the maximum over images, labels and batch sizes):

- ``probabilities``, ``p_error``, ``p_error_labels``: absolute difference;
- ``cams``: absolute difference after min-max normalising each map to [0, 1] on its own (a map
  whose range is below 1e-3 of the largest map range in the set is scaled by that floor instead,
  so a near-empty map cannot blow rounding noise up to order one);
- ``ood_score``: relative difference ``|a - b| / max(|b|, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.triage_net import TriageNet
from triage_common.bundle_format import (
    CAMS,
    OOD_SCORE,
    OUTPUTS,
    P_ERROR,
    P_ERROR_LABELS,
    PROBABILITIES,
)
from triage_common.logging import get_logger
from triage_common.onnx_runtime import CPU, OnnxRuntimeModel
from triage_common.preprocess import PreprocessSpec, preprocess, preprocess_file

log = get_logger(__name__)
F32 = npt.NDArray[np.float32]
CAM_FLOOR = 1e-3
OOD_FLOOR = 1.0


@dataclass(frozen=True)
class Tolerances:
    """Largest deviations a bundle may show and still be written."""

    probabilities: float = 1e-4
    p_error: float = 1e-4
    p_error_labels: float = 1e-4
    cams: float = 1e-4
    ood_score: float = 1e-4

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class ParityReport:
    """Measured deviations of ONNX Runtime from PyTorch and whether they are within tolerance."""

    source: str
    images: int
    input_shape: list[int]
    batch_sizes: list[int]
    providers: list[str]
    graph_optimization: str
    max_deviation: dict[str, float]
    tolerances: dict[str, float]
    metrics: dict[str, str] = field(
        default_factory=lambda: {
            PROBABILITIES: "max absolute difference",
            P_ERROR: "max absolute difference",
            P_ERROR_LABELS: "max absolute difference",
            CAMS: "max absolute difference after per-map min-max normalisation",
            OOD_SCORE: "max relative difference |a-b|/max(|b|,1)",
        }
    )

    @property
    def failures(self) -> list[str]:
        """One line per output past its tolerance (empty when the export passes)."""
        return [
            f"{name}: {dev:.3g} > {self.tolerances[name]:.3g}"
            for name, dev in self.max_deviation.items()
            if not dev <= self.tolerances[name]  # NaN fails too
        ]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """JSON types, as recorded in the manifest."""
        return {**asdict(self), "passed": self.ok}


def synthetic_inputs(count: int, spec: PreprocessSpec, channels: int = 1, seed: int = 0) -> F32:
    """Deterministic model inputs: smooth Gaussian blobs on a gradient, alternating with noise."""
    rng = np.random.default_rng(seed)
    s = spec.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / max(s - 1, 1)
    out = np.empty((count, channels, s, s), dtype=np.float32)
    for i in range(count):
        if i % 2 == 0:
            display = 0.2 + 0.3 * yy + 0.1 * xx
            for _ in range(4):
                cy, cx = rng.uniform(0.15, 0.85, size=2)
                sigma = rng.uniform(0.05, 0.2)
                amp = rng.uniform(-0.4, 0.6)
                display = display + amp * np.exp(
                    -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)
                )
        else:
            display = rng.uniform(0.0, 1.0, size=(s, s)).astype(np.float32)
        out[i] = preprocess(np.clip(display, 0.0, 1.0).astype(np.float32), spec)
    return out


def dataset_inputs(
    data: dict[str, Any], labels: Sequence[str], spec: PreprocessSpec, count: int, channels: int
) -> F32 | None:
    """The first ``count`` frontal images of the recorded dataset, or None when it is not here."""
    path = Path(str(data.get("path", "")))
    if not data.get("path") or not path.exists():
        return None
    from triage_common.datasets import load_dataset

    try:
        table = load_dataset(path, labels)
        images = [preprocess_file(p, spec) for p in table.paths[:count]]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("parity_dataset_unreadable", path=str(path), error=str(exc))
        return None
    if not images:
        return None
    x = np.stack(images).astype(np.float32)
    return np.repeat(x, channels, axis=1) if channels != x.shape[1] else x


def parity_inputs(
    data: dict[str, Any], labels: Sequence[str], spec: PreprocessSpec, count: int, channels: int
) -> tuple[F32, str]:
    """Images for the parity check and a description of where they came from."""
    found = dataset_inputs(data, labels, spec, count, channels)
    if found is not None:
        return found, f"dataset:{data['path']} (first {len(found)} frontal images)"
    return synthetic_inputs(count, spec, channels), f"synthetic (seed 0, {count} images)"


@torch.no_grad()
def torch_outputs(net: TriageNet, images: F32) -> dict[str, F32]:
    """PyTorch outputs of the served network for ``images``, by output name."""
    net.eval()
    outs = net(torch.from_numpy(images))
    return {name: t.numpy() for name, t in zip(OUTPUTS, outs, strict=True)}


def _minmax(cams: F32, floor: float) -> npt.NDArray[np.float64]:
    c = cams.astype(np.float64)
    lo = c.min(axis=(-2, -1), keepdims=True)
    span = c.max(axis=(-2, -1), keepdims=True) - lo
    normalised: npt.NDArray[np.float64] = (c - lo) / np.maximum(span, floor)
    return normalised


def deviations(reference: dict[str, F32], candidate: dict[str, F32]) -> dict[str, float]:
    """The parity measures of ``candidate`` (ONNX Runtime) against ``reference`` (PyTorch)."""
    out: dict[str, float] = {}
    for name in (PROBABILITIES, P_ERROR, P_ERROR_LABELS):
        diff = np.abs(candidate[name].astype(np.float64) - reference[name].astype(np.float64))
        out[name] = float(diff.max()) if diff.size else 0.0
    ref_cams = reference[CAMS]
    spans = ref_cams.max(axis=(-2, -1)) - ref_cams.min(axis=(-2, -1))
    floor = max(CAM_FLOOR * float(spans.max()) if spans.size else 0.0, 1e-30)
    cam_diff = np.abs(_minmax(candidate[CAMS], floor) - _minmax(ref_cams, floor))
    out[CAMS] = float(cam_diff.max()) if cam_diff.size else 0.0
    ref_ood = reference[OOD_SCORE].astype(np.float64)
    rel = np.abs(candidate[OOD_SCORE].astype(np.float64) - ref_ood) / np.maximum(
        np.abs(ref_ood), OOD_FLOOR
    )
    out[OOD_SCORE] = float(rel.max()) if rel.size else 0.0
    return out


def check_parity(
    net: TriageNet,
    onnx_path: Path,
    images: F32,
    *,
    source: str = "",
    batch_sizes: Sequence[int] | None = None,
    tolerances: Tolerances | None = None,
) -> ParityReport:
    """Run ``onnx_path`` under ONNX Runtime (CPU, optimisation ALL) and compare with PyTorch."""
    tolerances = tolerances or Tolerances()
    n = len(images)
    if n == 0:
        raise ValueError("the parity check needs at least one image")
    sizes = sorted({1, min(3, n), n} if batch_sizes is None else set(batch_sizes))
    reference = torch_outputs(net, images)
    model = OnnxRuntimeModel(onnx_path, providers=[CPU], allow_spinning=False)
    worst: dict[str, float] = {}
    for b in sizes:
        chunks = [model.run(images[i : i + b]) for i in range(0, n, b)]
        merged = {k: np.concatenate([c[k] for c in chunks]) for k in OUTPUTS}
        for name, shape_ref in reference.items():
            if merged[name].shape != shape_ref.shape:
                raise ValueError(
                    f"{onnx_path}: output {name} has shape {merged[name].shape} at batch {b}, "
                    f"PyTorch gives {shape_ref.shape}"
                )
        for name, dev in deviations(reference, merged).items():
            worst[name] = max(worst.get(name, 0.0), dev) if not np.isnan(dev) else float("nan")
    return ParityReport(
        source=source,
        images=n,
        input_shape=list(images.shape[1:]),
        batch_sizes=sizes,
        providers=model.providers,
        graph_optimization="ORT_ENABLE_ALL",
        max_deviation=worst,
        tolerances=tolerances.to_dict(),
    )
