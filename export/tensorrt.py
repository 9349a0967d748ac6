"""Serialized TensorRT engines from a bundle's ONNX graph (TensorRT 10 builder API).

One engine per precision (FP16, FP32), each with one optimisation profile covering batch
1..``max_batch`` (optimum at ``max_batch``), plus ``engines.json`` describing them (precision,
profile, TensorRT version, GPU, bundle id, sha256). Engines are specific to the GPU model and
TensorRT version that built them; the service's TensorRT execution provider can instead build
and cache its own (``triage_common.onnx_runtime.ProviderSettings.trt_engine_cache``).

Needs the ``tensorrt`` Python package and a CUDA GPU; without either, :func:`require_tensorrt`
raises :class:`MissingDependency` naming what is missing.
"""

from __future__ import annotations

import ctypes
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.manifest import file_entries, utc_now
from triage_common.atomic import atomic_write_bytes
from triage_common.bundle_format import read_manifest

PRECISIONS = ("fp16", "fp32")
ENGINES_JSON = "engines.json"
DEFAULT_WORKSPACE_BYTES = 4 << 30


class MissingDependency(RuntimeError):
    """TensorRT cannot run here: the package or a CUDA GPU is missing."""


@dataclass(frozen=True)
class CudaDevice:
    """A GPU as the CUDA driver reports it."""

    index: int
    name: str


def cuda_devices() -> list[CudaDevice]:
    """The GPUs the CUDA driver sees (none when ``libcuda`` is absent or finds no device)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) != 0:
            return []
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return []
        devices = []
        for i in range(count.value):
            device = ctypes.c_int(0)
            buf = ctypes.create_string_buffer(256)
            if lib.cuDeviceGet(ctypes.byref(device), i) == 0:
                lib.cuDeviceGetName(buf, len(buf), device)
            devices.append(CudaDevice(i, buf.value.decode(errors="replace") or f"GPU {i}"))
        return devices
    return []


def require_tensorrt() -> tuple[Any, list[CudaDevice]]:
    """The imported ``tensorrt`` module and the GPUs, or :class:`MissingDependency`."""
    missing: list[str] = []
    trt: Any = None
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        missing.append(
            f"the tensorrt Python package is not installed ({exc}; `pip install tensorrt` "
            "on a host with an NVIDIA driver)"
        )
    devices = cuda_devices()
    if not devices:
        missing.append("no CUDA GPU is visible (libcuda could not be loaded or reports no device)")
    if missing:
        raise MissingDependency("cannot build TensorRT engines: " + "; ".join(missing))
    return trt, devices


@dataclass(frozen=True)
class EngineSpec:
    """What one engine is built for."""

    precision: str
    input_name: str
    input_shape: tuple[int, ...]  # without the batch axis
    max_batch: int
    opt_batch: int
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES

    def profile(self) -> dict[str, Any]:
        """The optimisation profile as JSON (min / opt / max input shapes)."""
        return {
            "input": self.input_name,
            "min": [1, *self.input_shape],
            "opt": [self.opt_batch, *self.input_shape],
            "max": [self.max_batch, *self.input_shape],
        }


def build_engine(trt: Any, onnx_path: Path, spec: EngineSpec) -> bytes:
    """Parse ``onnx_path`` into an explicit-batch network and build a serialized engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0
    if major < 10:  # explicit batch is the only mode (and the flag deprecated) from TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    if spec.precision == "fp16":
        if not builder.platform_has_fast_fp16:
            raise RuntimeError("this GPU has no fast FP16: build --precision fp32 only")
        config.set_flag(trt.BuilderFlag.FP16)
    elif spec.precision != "fp32":
        raise ValueError(f"unknown precision {spec.precision!r}; choose from {PRECISIONS}")
    profile = builder.create_optimization_profile()
    p = spec.profile()
    profile.set_shape(spec.input_name, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build the {spec.precision} engine for {onnx_path}")
    return bytes(memoryview(serialized))


def build_engines(
    bundle: Path,
    out: Path,
    *,
    max_batch: int = 8,
    precisions: Sequence[str] = PRECISIONS,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> dict[str, Any]:
    """Build one engine per precision from a verified bundle; returns what ``engines.json`` holds.

    Checks the dependencies before reading anything large, so a host without TensorRT or a GPU
    fails fast with :class:`MissingDependency`.
    """
    if max_batch < 1:
        raise ValueError("--max-batch must be at least 1")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or not precisions:
        raise ValueError(f"unknown precision(s) {unknown}; choose from {PRECISIONS}")
    trt, devices = require_tensorrt()
    manifest = read_manifest(bundle)
    onnx_path = bundle / manifest["model"]["file"]
    input_spec = manifest["input"]
    out.mkdir(parents=True, exist_ok=True)
    engines: dict[str, Any] = {}
    for precision in dict.fromkeys(precisions):
        spec = EngineSpec(
            precision=precision,
            input_name=input_spec["name"],
            input_shape=tuple(int(d) for d in input_spec["shape"][1:]),
            max_batch=max_batch,
            opt_batch=max_batch,
            workspace_bytes=workspace_bytes,
        )
        name = f"triage_{precision}.plan"
        data = build_engine(trt, onnx_path, spec)
        atomic_write_bytes(out / name, data)
        engines[precision] = {
            "file": name,
            "profile": spec.profile(),
            **file_entries(out, [name])[name],
        }
    info = {
        "bundle_id": manifest["bundle_id"],
        "onnx": manifest["model"]["file"],
        "tensorrt": str(trt.__version__),
        "device": devices[0].name,
        "created": utc_now(),
        "precisions": list(engines),
        "engines": engines,
        "inputs": {input_spec["name"]: input_spec},
        "outputs": manifest["outputs"],
        "workspace_bytes": workspace_bytes,
    }
    (out / ENGINES_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return info
