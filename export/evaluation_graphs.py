"""The bundle's evaluation graphs (never served): ``evaluation.onnx`` and ``error_head.onnx``.

``evaluation.onnx`` (image -> every baseline, :data:`models.triage_net.EVALUATION_OUTPUTS`) lets
``triage evaluate`` score the Grad-CAM error model, the probabilities-only network and the
image-only direct predictor, and both OOD guards, on the evaluation set itself without torch.
``error_head.onnx`` ((probabilities, cams) -> the Grad-CAM error model's P(error)) lets it feed
the maps of other studies for the permutation ablation. Both are checked against PyTorch like
the served graph (largest absolute difference of every output, relative for the OOD distances).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import torch

from export.onnx_export import BATCH_AXIS, ExportError, check_onnx, export_onnx
from models.triage_net import (
    ERROR_HEAD_INPUTS,
    ERROR_HEAD_OUTPUT,
    EVALUATION_OUTPUTS,
    ErrorHeadNet,
    EvaluationNet,
)
from triage_common.atomic import atomic_path
from triage_common.onnx_runtime import CPU, OnnxRuntimeModel

EVALUATION_FILE = "evaluation.onnx"
ERROR_HEAD_FILE = "error_head.onnx"
#: Largest deviation of any evaluation output from PyTorch (relative for the OOD distances).
TOLERANCE = 1e-4
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EvaluationParity:
    """Measured deviations of the evaluation graphs from PyTorch."""

    max_deviation: dict[str, float]

    @property
    def ok(self) -> bool:
        return all(v <= TOLERANCE for v in self.max_deviation.values())


def export_error_head(
    module: ErrorHeadNet, path: Path, labels: int, cam_shape: tuple[int, int], opset: int
) -> onnx.ModelProto:
    """The two-input error head, TorchScript exporter, dynamic batch axis, checked."""
    module.eval()
    example = (torch.zeros(2, labels), torch.zeros(2, labels, *cam_shape))
    names = [*ERROR_HEAD_INPUTS, ERROR_HEAD_OUTPUT]
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        try:
            torch.onnx.export(
                module,
                example,
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=list(ERROR_HEAD_INPUTS),
                output_names=[ERROR_HEAD_OUTPUT],
                dynamic_axes={n: {0: BATCH_AXIS} for n in names},
                do_constant_folding=True,
            )
        except Exception as exc:
            raise ExportError(f"exporting the error head to ONNX failed: {exc}") from exc
        onnx.checker.check_model(str(tmp), full_check=True)
        model = onnx.load(str(tmp))
    return model


def _deviation(name: str, reference: F32, got: F32) -> float:
    ref, cand = reference.astype(np.float64), got.astype(np.float64)
    diff = np.abs(cand - ref)
    if name.startswith("ood"):
        diff = diff / np.maximum(np.abs(ref), 1.0)
    return float(diff.max()) if diff.size else 0.0


@torch.no_grad()
def export_evaluation_graphs(
    evaluation: EvaluationNet,
    error_head: ErrorHeadNet,
    folder: Path,
    images: F32,
    opset: int,
) -> tuple[dict[str, Any], EvaluationParity]:
    """Write both graphs into ``folder``, check them against PyTorch on ``images``; returns the
    manifest's ``evaluation`` section and the parity."""
    shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
    export_onnx(
        evaluation,
        folder / EVALUATION_FILE,
        input_shape=shape,
        output_names=EVALUATION_OUTPUTS,
        opset=opset,
    )
    reference = [t.numpy() for t in evaluation(torch.from_numpy(images))]
    probs, cams = reference[0], reference[1]
    export_error_head(error_head, folder / ERROR_HEAD_FILE, probs.shape[1], cams.shape[2:], opset)
    worst: dict[str, float] = {}
    session = OnnxRuntimeModel(folder / EVALUATION_FILE, providers=[CPU], allow_spinning=False)
    for b in sorted({1, len(images)}):
        chunks = [session.run(images[i : i + b]) for i in range(0, len(images), b)]
        for name, ref in zip(EVALUATION_OUTPUTS, reference, strict=True):
            got = np.concatenate([c[name] for c in chunks])
            worst[name] = max(worst.get(name, 0.0), _deviation(name, ref, got))
    head = OnnxRuntimeModel(folder / ERROR_HEAD_FILE, providers=[CPU], allow_spinning=False)
    (got_head,) = head.session.run(None, {"probabilities": probs, "cams": cams})
    worst[ERROR_HEAD_FILE] = _deviation("head", reference[2], got_head)
    check_onnx(folder / EVALUATION_FILE, "image", EVALUATION_OUTPUTS)
    section = {
        "file": EVALUATION_FILE,
        "outputs": list(EVALUATION_OUTPUTS),
        "error_head": {
            "file": ERROR_HEAD_FILE,
            "inputs": list(ERROR_HEAD_INPUTS),
            "output": ERROR_HEAD_OUTPUT,
        },
        "parity": {"max_deviation": worst, "tolerance": TOLERANCE},
        "served": "never: for `triage evaluate` (baselines, permutation ablation, both guards)",
    }
    return section, EvaluationParity(worst)
