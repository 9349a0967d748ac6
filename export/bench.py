"""``triage bench model``: the served graph against its alternatives, in one process and one run.

Three paths on the same random weights (no training needed), each at each batch size:

- ``bundle``: the full exported graph (classifier + in-graph Grad-CAM + OOD score + error model)
  under ONNX Runtime, optimisation ALL, CPU;
- ``plain_onnx``: the classifier alone (logits only) exported and run the same way;
- ``eager_gradcam``: PyTorch eager forward plus autograd Grad-CAM, one full backward pass per
  label as pytorch-grad-cam runs it (:func:`models.gradcam.autograd_gradcam` with
  ``backward="full"``), what serving Grad-CAM with a common tool and no export costs.

Throughput is the batch size over the median time of one call after warm-up. Paths run in
blocks (not interleaved), with ONNX Runtime's spinning thread pool off since torch shares the
process (see PERF-NOTES). Targets: bundle at least 90% of plain ONNX and at least 10x eager.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from export.onnx_export import export_onnx
from models.densenet import DenseNet, config_by_name
from models.error_model import ErrorModel, ErrorModelConfig
from models.gradcam import autograd_gradcam
from models.ood import MahalanobisOOD
from models.triage_net import TriageNet
from triage_common.bundle_format import INPUT, OUTPUTS
from triage_common.onnx_runtime import CPU, OnnxRuntimeModel

PATHS = ("bundle", "plain_onnx", "eager_gradcam")
PATH_TITLES = {
    "bundle": "bundle graph, ONNX Runtime (classifier + CAM + OOD + error model)",
    "plain_onnx": "plain DenseNet classifier (logits only), ONNX Runtime",
    "eager_gradcam": "PyTorch eager + Grad-CAM (1 full backward per label, pytorch-grad-cam style)",
}
TARGETS = {"bundle/plain_onnx": 0.90, "bundle/eager_gradcam": 10.0}


@dataclass(frozen=True)
class BenchOptions:
    """Everything ``triage bench model`` takes."""

    size: int = 224
    config: str = "densenet121"
    labels: int = 4
    iterations: int = 20
    warmup: int = 2
    batch_sizes: tuple[int, ...] = (1, 8)
    seed: int = 0


class LogitsOnly(nn.Module):
    """The classifier without CAM, OOD or error model: what a plain export would serve."""

    def __init__(self, classifier: DenseNet) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, image: Tensor) -> Tensor:
        return self.classifier.logits(image)


def build_networks(options: BenchOptions) -> tuple[DenseNet, TriageNet]:
    """A randomly initialised classifier and the served network around it (eval mode)."""
    torch.manual_seed(options.seed)
    classifier = DenseNet(config_by_name(options.config, options.labels, 1, "relu")).eval()
    ood = MahalanobisOOD(classifier.num_features)
    error_model = ErrorModel(ErrorModelConfig(num_labels=options.labels))
    return classifier, TriageNet(classifier, ood, error_model).eval()


def time_calls(fn: Callable[[], object], iterations: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``iterations`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _stats(times: Sequence[float], batch: int) -> dict[str, float]:
    median = statistics.median(times)
    return {
        "images_per_s": batch / median,
        "median_ms": 1000 * median,
        "min_ms": 1000 * min(times),
        "mean_ms": 1000 * statistics.fmean(times),
        "calls": len(times),
    }


def run_benchmark(options: BenchOptions, workdir: Path | None = None) -> dict[str, Any]:
    """Export both graphs, time the three paths; returns the JSON-able results."""
    classifier, net = build_networks(options)
    shape = (1, options.size, options.size)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        bundle_path, plain_path = Path(tmp) / "triage.onnx", Path(tmp) / "plain.onnx"
        export_onnx(net, bundle_path, input_shape=shape, output_names=OUTPUTS)
        export_onnx(LogitsOnly(classifier), plain_path, input_shape=shape, output_names=["logits"])
        bundle = OnnxRuntimeModel(bundle_path, providers=[CPU], allow_spinning=False)
        plain = OnnxRuntimeModel(plain_path, providers=[CPU], allow_spinning=False)
        rng = np.random.default_rng(options.seed)
        results: dict[str, dict[str, dict[str, float]]] = {p: {} for p in PATHS}
        for batch in options.batch_sizes:
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            xt = torch.from_numpy(x)
            calls: dict[str, Callable[[], object]] = {
                "bundle": partial(bundle.run, x),
                "plain_onnx": partial(plain.run, x),
                "eager_gradcam": partial(autograd_gradcam, classifier, xt, backward="full"),
            }
            for path in PATHS:
                times = time_calls(calls[path], options.iterations, options.warmup)
                results[path][str(batch)] = _stats(times, batch)
    ratios = {
        key: {
            str(b): results[num][str(b)]["images_per_s"] / results[den][str(b)]["images_per_s"]
            for b in options.batch_sizes
        }
        for key, (num, den) in {
            "bundle/plain_onnx": ("bundle", "plain_onnx"),
            "bundle/eager_gradcam": ("bundle", "eager_gradcam"),
        }.items()
    }
    met = {k: all(v >= TARGETS[k] for v in ratios[k].values()) for k in TARGETS}
    return {
        "options": asdict(options),
        "input": {"name": INPUT, "shape": ["batch", *shape]},
        "results": results,
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": met,
        "threads": {"torch": torch.get_num_threads(), "onnxruntime_intra_op": "default (cores)"},
        "onnxruntime_allow_spinning": False,
        "providers": bundle.providers,
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "cpu": _cpu_model(),
        },
        "versions": {"torch": torch.__version__, "onnxruntime": _ort_version()},
    }


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    """Columns and rows of the printed table (throughput, then ratios with their targets)."""
    batches = [str(b) for b in result["options"]["batch_sizes"]]
    columns = ["path", *(f"batch {b} img/s" for b in batches), "target"]
    rows: list[list[object]] = [
        [PATH_TITLES[p], *(f"{result['results'][p][b]['images_per_s']:.2f}" for b in batches), ""]
        for p in PATHS
    ]
    for key, target in result["targets"].items():
        ok = "met" if result["targets_met"][key] else "NOT met"
        rows.append(
            [
                f"ratio {key}",
                *(f"{result['ratios'][key][b]:.2f}" for b in batches),
                f">= {target} ({ok})",
            ]
        )
    return columns, rows
