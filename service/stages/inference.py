"""Inference stage: the one function that opens a bundle's model for an inference configuration.

:func:`open_model` resolves ``inference.providers`` to the ONNX Runtime execution providers that
really load here (CPU last), plans how many batches run at once and with how many threads
(``inference.streams``, ``inference.intra_op_threads``; :func:`plan_inference`), and opens one
session on the bundle's graph with the GPU provider options (TensorRT engine cache, FP16). The
server, calibration/evaluation and ``triage bench serve`` all open their model here, so they run
the graph the same way. The session itself lives in :mod:`triage_common.onnx_runtime`.

With ``inference.backend = "kserve"`` the graph runs on a remote KServe v2 server instead
(:mod:`service.stages.kserve`): :func:`open_model` returns a client whose metadata was checked
against the bundle, with ``remote`` set so that the server's readiness can follow it, and
``inference.streams`` batches in flight to it at once (0: ``kserve.DEFAULT_STREAMS``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.bundle import Bundle
from service.config import InferenceConfig
from service.core.types import InferenceModel
from triage_common.onnx_runtime import (
    PROVIDER_NAMES,
    InferencePlan,
    OnnxRuntimeModel,
    ProviderSettings,
    available_providers,
    plan_inference,
    usable_cores,
)

if TYPE_CHECKING:
    from service.stages.kserve import KServeModel


@dataclass(frozen=True)
class OpenedModel:
    """A session on the bundle's graph, the providers it runs on and the plan it was opened for.

    ``remote`` is the KServe client when the graph runs on a remote server (``model`` is then
    that client too), else None.
    """

    model: InferenceModel
    providers: list[str]
    plan: InferencePlan
    remote: KServeModel | None = None


def settings_for(inference: InferenceConfig) -> ProviderSettings:
    """The GPU provider options ``inference.*`` asks for (engine cache, FP16)."""
    cache = Path(inference.trt_engine_cache) if inference.trt_engine_cache else None
    return ProviderSettings(trt_engine_cache=cache, trt_fp16=inference.trt_fp16)


def providers_for(inference: InferenceConfig) -> list[str]:
    """The ONNX Runtime providers of ``inference.providers`` that really load here, CPU last."""
    return available_providers(
        [PROVIDER_NAMES[p] for p in inference.providers], settings_for(inference)
    )


def plan_for(
    inference: InferenceConfig, providers: list[str], cores: int | None = None
) -> InferencePlan:
    """``inference.streams`` and ``inference.intra_op_threads`` resolved for these providers."""
    cores = usable_cores() if cores is None else cores
    return plan_inference(inference.streams, inference.intra_op_threads, providers, cores)


def open_model(
    bundle: Bundle, inference: InferenceConfig, *, streams: int | None = None
) -> OpenedModel:
    """Open the bundle's graph as ``inference`` says; ``streams`` overrides ``inference.streams``.

    A caller that runs one batch at a time (calibration, evaluation) passes ``streams=1`` and
    gets every core for that batch. ORT's idle threads never spin: decoding threads (or torch,
    in the export checks) share the cores.
    """
    if streams is not None:
        inference = dataclasses.replace(inference, streams=streams)
    if inference.backend == "kserve":
        from service.stages.kserve import DEFAULT_STREAMS, open_kserve

        remote = open_kserve(bundle, inference)
        plan = InferencePlan(streams=inference.streams or DEFAULT_STREAMS, intra_op_threads=0)
        return OpenedModel(remote, remote.providers, plan, remote)
    providers = providers_for(inference)
    plan = plan_for(inference, providers)
    model = OnnxRuntimeModel(
        bundle.model_file,
        providers=providers,
        intra_op_threads=plan.intra_op_threads,
        allow_spinning=False,
        settings=settings_for(inference),
    )
    return OpenedModel(model, model.providers, plan)
