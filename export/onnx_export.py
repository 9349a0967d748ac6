"""PyTorch module -> one self-contained ONNX file with a dynamic batch axis, checked by onnx.

Two exporters: the TorchScript one (``torch.onnx.export(dynamo=False)``, opset 17 by default,
about 2 s for the compact DenseNet) and the ``torch.export`` one (``dynamo=True``, opset 18 by
default, about ten times slower). Both give the same graph interface: input ``image``
``[batch, C, S, S]`` float32 and the named outputs, each with ``batch`` as its first axis.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import nn

from triage_common.atomic import atomic_path

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")
DEFAULT_OPSET: dict[Exporter, int] = {"torchscript": 17, "dynamo": 18}
MIN_OPSET = 17
BATCH_AXIS = "batch"


class ExportError(RuntimeError):
    """The module could not be exported, or the exported file fails the ONNX checker."""


def _export(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: Sequence[str],
    opset: int,
    exporter: Exporter,
) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation; nothing to act on here.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        if exporter == "torchscript":
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes={n: {0: BATCH_AXIS} for n in (input_name, *output_names)},
                do_constant_folding=True,
            )
        else:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS, min=1, max=4096)},),
                external_data=False,
                verbose=False,
            )


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_onnx(
    path: Path, input_name: str, output_names: Sequence[str], min_opset: int = MIN_OPSET
) -> onnx.ModelProto:
    """Run the ONNX checker and verify names, float32 types and the dynamic batch axis."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path} fails the ONNX checker: {exc}") from exc
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < min_opset:
        raise ExportError(f"{path} has opset {opset}; at least {min_opset} is required")
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if [i.name for i in inputs] != [input_name]:
        raise ExportError(
            f"{path} inputs are {[i.name for i in inputs]}, expected [{input_name!r}]"
        )
    if [o.name for o in model.graph.output] != list(output_names):
        names = [o.name for o in model.graph.output]
        raise ExportError(f"{path} outputs are {names}, expected {list(output_names)}")
    for value in (*inputs, *model.graph.output):
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{path}: {value.name} is not float32")
        dims = _dims(value)
        if not dims or isinstance(dims[0], int):
            raise ExportError(f"{path}: {value.name} has no dynamic batch axis (shape {dims})")
    return model


def graph_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Every graph input and output with its shape (``"batch"`` for the dynamic axis)."""
    initializers = {t.name for t in model.graph.initializer}
    values = [i for i in model.graph.input if i.name not in initializers] + list(model.graph.output)
    return {v.name: [BATCH_AXIS if isinstance(d, str) else d for d in _dims(v)] for v in values}


def export_onnx(
    module: nn.Module,
    path: Path,
    *,
    input_shape: tuple[int, int, int],
    output_names: Sequence[str],
    input_name: str = "image",
    opset: int | None = None,
    exporter: Exporter = "torchscript",
) -> onnx.ModelProto:
    """Export ``module`` (in eval mode) to ``path``, written atomically; returns the checked model.

    ``input_shape`` is ``(C, S, S)``; the example batch has two images so that no exporter can
    specialise the batch axis to 1.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")
    opset = DEFAULT_OPSET[exporter] if opset is None else opset
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; use {MIN_OPSET} or later")
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *input_shape)
    with atomic_path(path) as tmp:
        try:
            _export(module, example, tmp, input_name, output_names, opset, exporter)
        except Exception as exc:
            raise ExportError(f"{exporter} export to ONNX (opset {opset}) failed: {exc}") from exc
        model = check_onnx(tmp, input_name, output_names)
    return model
