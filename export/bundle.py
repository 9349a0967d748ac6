"""``triage export onnx`` as a function: two runs -> a verified model bundle folder.

Steps: rebuild :class:`TriageNet` from the runs (refusing an error model trained on another
classifier), export one ONNX graph, check ONNX Runtime against PyTorch, then write the manifest
last. Everything is written into a staging folder beside ``out`` that replaces ``out`` only
after the parity check passed and the manifest verifies, so a failed export never leaves a
bundle behind (nor destroys the previous one).
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.evaluation_graphs import ERROR_HEAD_FILE, EVALUATION_FILE, export_evaluation_graphs
from export.manifest import finalise_manifest, swap_in, utc_now, write_manifest
from export.onnx_export import DEFAULT_OPSET, Exporter, ExportError, export_onnx, graph_shapes
from export.parity import ParityReport, Tolerances, check_parity, parity_inputs
from export.sources import ExportSources, load_sources
from triage_common.bundle_format import (
    CAMS,
    INPUT,
    MANIFEST,
    MODEL_FILE,
    OOD_SCORE,
    OUTPUTS,
    P_ERROR,
    P_ERROR_LABELS,
    PROBABILITIES,
    read_manifest,
)
from triage_common.logging import get_logger

log = get_logger(__name__)

DEFAULT_DEFER_COST = 0.2
DEFAULT_PARITY_IMAGES = 8


@dataclass(frozen=True)
class OnnxExportOptions:
    """Everything ``triage export onnx`` takes."""

    classifier: Path
    error_model: Path
    out: Path
    opset: int | None = None
    exporter: Exporter = "torchscript"
    defer_cost: float = DEFAULT_DEFER_COST
    parity_images: int = DEFAULT_PARITY_IMAGES
    tolerances: Tolerances = field(default_factory=Tolerances)


class ParityFailure(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond the tolerances: no bundle was written."""

    def __init__(self, out: Path, report: ParityReport) -> None:
        self.out = out
        self.report = report
        super().__init__(
            f"refusing to write bundle {out}: ONNX Runtime deviates from PyTorch "
            f"({'; '.join(report.failures)}) on {report.images} {report.source} inputs"
        )


def _report_summary(report: dict[str, Any]) -> dict[str, Any]:
    groups = [
        {
            "group": g.get("group"),
            "images": g.get("images"),
            "macro_auroc": g.get("macro_auroc"),
            "study_error_rate": g.get("study_error_rate"),
            "ood_flag_rate": g.get("ood_flag_rate"),
            "error_detection_auroc": {
                method: m.get("auroc") for method, m in g.get("error_detection", {}).items()
            },
        }
        for g in report.get("groups", [])
    ]
    return {
        "groups": groups,
        "cam_iou": report.get("cam_iou", {}),
        "external_ood": report.get("external_ood", {}),
    }


def _versions(opset: int, exporter: str) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "opset": opset,
        "exporter": exporter,
    }


def output_shapes(src: ExportSources) -> dict[str, list[int | str]]:
    """Shapes of the graph outputs, ``"batch"`` first."""
    n = len(src.labels)
    h, w = src.classifier.model.config.cam_shape(src.size, src.size)
    shapes: dict[str, list[int | str]] = {
        PROBABILITIES: ["batch", n],
        CAMS: ["batch", n, h, w],
        OOD_SCORE: ["batch"],
        P_ERROR: ["batch"],
        P_ERROR_LABELS: ["batch", n],
    }
    assert tuple(shapes) == OUTPUTS
    return shapes


def manifest_body(
    src: ExportSources,
    *,
    opset: int,
    exporter: str,
    ir_version: int,
    defer_cost: float,
    parity: ParityReport,
) -> dict[str, Any]:
    """Every manifest key but ``format``, ``files`` and ``bundle_id``."""
    cmeta, emeta = src.classifier.meta, src.error_meta
    shapes = output_shapes(src)
    ood = emeta["ood"]
    return {
        "model": {
            "file": MODEL_FILE,
            "format": "onnx",
            "opset": opset,
            "ir_version": ir_version,
            "exporter": exporter,
            "graph_optimization": "ORT_ENABLE_ALL",
        },
        "labels": list(src.labels),
        "input": {
            "name": INPUT,
            "shape": ["batch", src.in_channels, src.size, src.size],
            "dtype": "float32",
        },
        "outputs": {name: {"shape": shape, "dtype": "float32"} for name, shape in shapes.items()},
        "preprocess": src.classifier.spec.to_dict(),
        "thresholds": {
            label: float(t) for label, t in zip(src.labels, src.classifier.thresholds, strict=True)
        },
        "threshold_rule": cmeta.get("threshold_rule"),
        "cam": {
            "layer": cmeta.get("cam", {}).get("layer", src.classifier.model.cam_layer),
            "shape": shapes[CAMS][2:],
            "output": CAMS,
            "method": "Grad-CAM in closed form inside the graph (equal to autograd Grad-CAM)",
            "pixels_per_cell": src.classifier.model.config.downsampling,
        },
        "error_model": {
            "config": emeta["config"],
            "served": emeta.get("served", "gradcam"),
            "served_rule": emeta.get("served_rule"),
            "error_definition": emeta.get("error_definition"),
            "inputs": [PROBABILITIES, CAMS],
            "output": "p_error",
            "per_label_output": P_ERROR_LABELS,
        },
        "ood": {
            "kind": ood.get("kind") if src.evaluation is not None else "mahalanobis",
            "score": ood.get("score"),
            "features": ood.get("features"),
            "shrinkage": ood.get("shrinkage"),
            "fitted_on": ood.get("fitted_on"),
            "threshold": ood.get("threshold"),
            "threshold_rule": ood.get("threshold_rule"),
            "single_layer_threshold": ood.get("single_layer_threshold"),
            "groups": (ood.get("multi_layer") or {}).get("groups"),
            "output": OOD_SCORE,
        },
        "defer_cost": float(defer_cost),
        "provenance": {
            "created": utc_now(),  # outside the bundle id (bundle_format.ID_KEYS)
            "dataset": cmeta.get("data", {}),
            "split_counts": cmeta.get("split_counts", {}),
            "classifier": {
                "run": str(src.classifier_dir.resolve()),
                "sha256": src.classifier_sha256,
                "architecture": cmeta.get("architecture", {}),
                "pooled_features": cmeta.get("pooled_features"),
                "metrics": cmeta.get("metrics", {}),
                "training": cmeta.get("training", {}),
            },
            "error_model": {
                "run": str(src.error_dir.resolve()),
                "training": emeta.get("training", {}),
                "baseline_config": emeta.get("baseline_config"),
                "split_counts": emeta.get("split_counts", {}),
                "report": _report_summary(emeta.get("report", {})),
            },
            "export": _versions(opset, exporter),
        },
        "parity": parity.to_dict(),
    }


def _check_replaceable(out: Path) -> None:
    """``out`` must be absent, an empty folder, or an earlier bundle (which is replaced)."""
    if not out.exists():
        return
    is_bundle = out.is_dir() and (out / MANIFEST).exists()
    if not (is_bundle or (out.is_dir() and not any(out.iterdir()))):
        raise ExportError(
            f"{out} exists and is not a model bundle: refusing to replace it "
            "(remove it or choose another --out)"
        )


def _install(staging: Path, out: Path) -> None:
    """Move the finished staging folder to ``out``, replacing an earlier bundle there."""
    if out.exists():
        _check_replaceable(out)
    swap_in(staging, out)


def export_bundle(options: OnnxExportOptions) -> dict[str, Any]:
    """Export, check parity, write the bundle; returns the manifest as written."""
    if not 0.0 <= options.defer_cost <= 1.0:
        raise ValueError(f"--defer-cost must be within [0, 1], got {options.defer_cost}")
    if options.parity_images < 1:
        raise ValueError("--parity-images must be at least 1")
    src = load_sources(options.classifier, options.error_model)
    _check_replaceable(options.out)
    opset = options.opset if options.opset is not None else DEFAULT_OPSET[options.exporter]
    out = options.out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        model = export_onnx(
            src.net,
            staging / MODEL_FILE,
            input_shape=(src.in_channels, src.size, src.size),
            input_name=INPUT,
            output_names=OUTPUTS,
            opset=opset,
            exporter=options.exporter,
        )
        expected = output_shapes(src)
        for name, dims in graph_shapes(model).items():
            want = expected.get(name, ["batch", src.in_channels, src.size, src.size])
            if len(dims) != len(want) or any(
                isinstance(d, int) and d != w for d, w in zip(dims, want, strict=True)
            ):
                raise ExportError(f"{MODEL_FILE}: {name} has shape {dims}, expected {want}")
        images, source = parity_inputs(
            src.classifier.meta.get("data", {}),
            src.labels,
            src.classifier.spec,
            options.parity_images,
            src.in_channels,
        )
        report = check_parity(
            src.net, staging / MODEL_FILE, images, source=source, tolerances=options.tolerances
        )
        log.info("parity", source=source, **report.max_deviation)
        if not report.ok:
            raise ParityFailure(out, report)
        body = manifest_body(
            src,
            opset=opset,
            exporter=options.exporter,
            ir_version=int(model.ir_version),
            defer_cost=options.defer_cost,
            parity=report,
        )
        files = [MODEL_FILE]
        if src.evaluation is not None and src.error_head is not None:
            section, evaluation_parity = export_evaluation_graphs(
                src.evaluation, src.error_head, staging, images, min(opset, 17)
            )
            log.info("evaluation_parity", **evaluation_parity.max_deviation)
            if not evaluation_parity.ok:
                raise ExportError(
                    f"refusing to write bundle {out}: the evaluation graphs deviate from "
                    f"PyTorch ({evaluation_parity.max_deviation})"
                )
            body["evaluation"] = section
            files += [EVALUATION_FILE, ERROR_HEAD_FILE]
        manifest = finalise_manifest(body, staging, files)
        write_manifest(staging, manifest)
        read_manifest(staging)  # the service's own check, before the bundle goes live
        _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
