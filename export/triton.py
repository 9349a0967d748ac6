"""A Triton Inference Server model repository from a model bundle (ONNX Runtime backend).

Layout::

    REPO/<model>/config.pbtxt           platform onnxruntime_onnx, batching, instances
    REPO/<model>/1/model.onnx           the bundle's ONNX graph, byte for byte
    REPO/<model>/bundle_manifest.json   the bundle manifest (labels, thresholds, provenance)

Dims in ``config.pbtxt`` leave out the batch axis (``max_batch_size`` > 0). An output that is
only ``[batch]`` (``ood_score``, ``p_error``) is declared ``dims: [ 1 ]`` with
``reshape: { shape: [ ] }``, the form Triton requires for per-item scalars.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from export.manifest import swap_in
from triage_common.bundle_format import MANIFEST, read_manifest, sha256_file

Kind = Literal["cpu", "gpu"]
DEFAULT_MODEL_NAME = "cxr_triage"
CONFIG = "config.pbtxt"
MODEL_FILE = "model.onnx"
VERSION = "1"
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}


@dataclass(frozen=True)
class TritonOptions:
    """Everything ``triage export triton`` takes."""

    max_batch: int = 8
    instances: int = 1
    kind: Kind = "cpu"
    model_name: str = DEFAULT_MODEL_NAME
    max_queue_delay_us: int = 2000


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch``, and ``max_batch`` itself."""
    sizes = {b for b in (2, 4, 8, 16, 32, 64) if b <= max_batch}
    if max_batch > 1:
        sizes.add(max_batch)
    return sorted(sizes)


def _ints(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _tensor(name: str, spec: dict[str, Any], *, is_input: bool) -> str:
    dims = [int(d) for d in spec["shape"][1:]]
    dtype = TRITON_DTYPES[spec["dtype"]]
    lines = [f'    name: "{name}"', f"    data_type: {dtype}"]
    if is_input and len(dims) == 3:
        lines.append("    format: FORMAT_NCHW")
    if dims:
        lines.append(f"    dims: {_ints(dims)}")
    else:
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(manifest: dict[str, Any], options: TritonOptions) -> str:
    """The ``config.pbtxt`` text for a bundle's graph."""
    if options.max_batch < 1:
        raise ValueError("--max-batch must be at least 1")
    if options.instances < 1:
        raise ValueError("--instances must be at least 1")
    inp = manifest["input"]
    inputs = [_tensor(inp["name"], inp, is_input=True)]
    outputs = [_tensor(n, spec, is_input=False) for n, spec in manifest["outputs"].items()]
    kind = "KIND_GPU" if options.kind == "gpu" else "KIND_CPU"
    parts = [
        f"# cxr-triage bundle {manifest['bundle_id']}: labels {', '.join(manifest['labels'])}",
        f'name: "{options.model_name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {options.max_batch}",
        "version_policy: { latest: { num_versions: 1 } }",
        "input [\n" + ",\n".join(inputs) + "\n]",
        "output [\n" + ",\n".join(outputs) + "\n]",
    ]
    preferred = preferred_batch_sizes(options.max_batch)
    batching = [f"  max_queue_delay_microseconds: {options.max_queue_delay_us}"]
    if preferred:
        batching.insert(0, f"  preferred_batch_size: {_ints(preferred)}")
    parts.append("dynamic_batching {\n" + "\n".join(batching) + "\n}")
    parts.append(
        f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {kind}\n  }}\n]"
    )
    parts.append(
        'parameters { key: "bundle_id" value: { string_value: "' + manifest["bundle_id"] + '" } }'
    )
    return "\n".join(parts) + "\n"


def write_triton_repository(bundle: Path, repo: Path, options: TritonOptions) -> Path:
    """Write (or replace) ``repo/<model>`` from a verified bundle; returns the model folder."""
    manifest = read_manifest(bundle)
    text = config_pbtxt(manifest, options)
    onnx_name = manifest["model"]["file"]
    model_dir = repo / options.model_name
    staging = repo / f".{options.model_name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / VERSION).mkdir(parents=True)
    try:
        shutil.copyfile(bundle / onnx_name, staging / VERSION / MODEL_FILE)
        if sha256_file(staging / VERSION / MODEL_FILE) != manifest["files"][onnx_name]["sha256"]:
            raise OSError(f"copying {bundle / onnx_name} changed its bytes")
        shutil.copyfile(bundle / MANIFEST, staging / "bundle_manifest.json")
        (staging / CONFIG).write_text(text)
        swap_in(staging, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir
