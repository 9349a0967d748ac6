"""ONNX Runtime inference for the model bundle: execution-provider selection and a session wrapper.

Torch-free and service-free on purpose: the server opens its model through it
(:func:`service.stages.inference.open_model`), and so do the export parity checks and ``triage
bench model`` (which also hold torch in the same process; they turn ORT's spinning thread pool
off, see ``allow_spinning``).

``onnxruntime-gpu`` lists the TensorRT and CUDA providers whether or not their libraries and a
GPU are present, and asking for a missing one logs an ERROR and silently falls back. So
:func:`available_providers` tries each requested provider once, on a tiny built-in model, with
ORT's logging turned down and its fallback banner swallowed, and keeps only those that load.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: The service's preference order: TensorRT, then CUDA, then the CPU as the fallback.
DEFAULT_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA, CPU)
#: ``inference.providers`` names (the configuration's) -> ONNX Runtime execution provider names.
PROVIDER_NAMES: dict[str, str] = {"TensorRT": TENSORRT, "CUDA": CUDA, "CPU": CPU}

#: A serialized ONNX model ``y = Identity(x)`` (opset 13, ir_version 7, x and y float[1]), used
#: to probe providers without the ``onnx`` package (the serving image has none). The tests
#: rebuild it with ``onnx.helper`` and compare bytes.
PROBE_MODEL = (
    b'\x08\x07\x12\x00:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n'
    b"\x08\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01"
    b"B\x04\n\x00\x10\r"
)

#: ORT log severities: 0 verbose, 1 info, 2 warning (ORT's default), 3 error, 4 fatal.
_QUIET = 4
_ORT_DEFAULT_SEVERITY = 2
_probe_lock = threading.Lock()
_probe_cache: dict[tuple[str, tuple[tuple[str, str], ...]], bool] = {}


@dataclass(frozen=True)
class ProviderSettings:
    """Options passed to the GPU providers when they are used.

    ``trt_engine_cache`` keeps TensorRT engines built by the TensorRT provider between runs
    (the first session on a new GPU builds them, which takes minutes for DenseNet-121).
    """

    trt_engine_cache: Path | None = None
    trt_fp16: bool = True
    trt_max_workspace_bytes: int = 2 << 30
    device_id: int = 0

    def options_for(self, provider: str) -> dict[str, str]:
        """The ``provider_options`` dictionary ORT takes for ``provider``."""
        if provider == TENSORRT:
            options = {
                "device_id": str(self.device_id),
                "trt_fp16_enable": "True" if self.trt_fp16 else "False",
                "trt_max_workspace_size": str(self.trt_max_workspace_bytes),
            }
            if self.trt_engine_cache is not None:
                options["trt_engine_cache_enable"] = "True"
                options["trt_engine_cache_path"] = str(self.trt_engine_cache)
                options["trt_timing_cache_enable"] = "True"
                options["trt_timing_cache_path"] = str(self.trt_engine_cache)
            return options
        if provider == CUDA:
            return {"device_id": str(self.device_id)}
        return {}


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def _probe(provider: str, options: dict[str, str]) -> bool:
    """Whether an ORT session on :data:`PROBE_MODEL` really runs on ``provider``."""
    ort = _ort()
    if provider not in ort.get_available_providers():
        return False
    session_options = ort.SessionOptions()
    session_options.log_severity_level = _QUIET
    ort.set_default_logger_severity(_QUIET)
    try:
        # ORT prints its "EP Error ... Falling back" banner with print(): swallow it.
        with contextlib.redirect_stdout(io.StringIO()):
            session = ort.InferenceSession(
                PROBE_MODEL,
                sess_options=session_options,
                providers=[provider],
                provider_options=[options],
            )
        return provider in session.get_providers()
    except Exception:  # a provider that cannot be created is simply not available
        return False
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def available_providers(
    requested: Sequence[str], settings: ProviderSettings | None = None
) -> list[str]:
    """The requested providers that really load here, in the requested order, CPU always last.

    Each provider is created once (per process and options) on a tiny model, quietly; one that
    fails (no GPU, no CUDA/cuDNN/TensorRT libraries) is dropped without an ERROR on stderr.
    """
    settings = settings or ProviderSettings()
    kept: list[str] = []
    for provider in requested:
        if provider == CPU or provider in kept:
            continue
        options = settings.options_for(provider)
        key = (provider, tuple(sorted(options.items())))
        with _probe_lock:
            if key not in _probe_cache:
                _probe_cache[key] = _probe(provider, options)
            ok = _probe_cache[key]
        if ok:
            kept.append(provider)
    kept.append(CPU)
    return kept


#: Upper bound of the automatic number of CPU streams (each holds a batch's activations).
MAX_AUTO_STREAMS = 4


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class InferencePlan:
    """How many batches run at once and how many ORT intra-op threads each uses (0: ORT's)."""

    streams: int
    intra_op_threads: int


def plan_inference(
    streams: int, intra_op_threads: int, providers: Sequence[str], cores: int
) -> InferencePlan:
    """Resolve ``inference.streams`` and ``inference.intra_op_threads`` (0 means automatic).

    On a GPU provider the device runs one batch at a time: 1 stream, ORT's default threads.
    On the CPU the cores are shared out: ``min(4, cores)`` streams (or ``cores // threads`` when
    the threads are set) of ``cores // streams`` threads each, at least one of each.
    """
    cores = max(1, cores)
    if providers and providers[0] != CPU:
        return InferencePlan(streams or 1, intra_op_threads)
    if streams == 0:
        streams = cores // intra_op_threads if intra_op_threads else cores
        streams = max(1, min(MAX_AUTO_STREAMS, streams))
    threads = intra_op_threads or max(1, cores // streams)
    return InferencePlan(streams, threads)


class OnnxRuntimeModel:
    """An ONNX Runtime session on one model file, graph optimisation level ALL.

    ``providers`` are filtered through :func:`available_providers` (so the CPU is always there
    as the fallback). ``intra_op_threads=0`` lets ORT use one thread per physical core.
    ``allow_spinning=False`` stops idle ORT worker threads from busy-waiting: use it whenever
    another thread pool (torch, a resize, a decoder) shares the cores.
    """

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[str] = (CPU,),
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        allow_spinning: bool = True,
        settings: ProviderSettings | None = None,
    ) -> None:
        ort = _ort()
        settings = settings or ProviderSettings()
        self.path = Path(path)
        names = available_providers(providers, settings)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
        options.add_session_config_entry(
            "session.inter_op.allow_spinning", "1" if allow_spinning else "0"
        )
        self.session: Any = ort.InferenceSession(
            str(self.path),
            sess_options=options,
            providers=names,
            provider_options=[settings.options_for(n) for n in names],
        )
        self.input_name: str = self.session.get_inputs()[0].name
        self.output_names: tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())

    @property
    def providers(self) -> list[str]:
        """The providers the session actually runs on, in priority order."""
        return list(self.session.get_providers())

    def run(self, batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        """Run one batch ``[B, C, S, S]``; returns every output by name."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"expected a batch of shape [B, C, S, S], got {x.shape}")
        outputs = self.session.run(list(self.output_names), {self.input_name: x})
        return dict(zip(self.output_names, outputs, strict=True))
