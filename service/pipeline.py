"""The one place where the stages are wired, in the one direction data flows.

    prepare    instances (bytes)
      -> policy.cost_for           the request's defer cost (override checked against bounds)
      -> decoder                   in a decode worker process (stages.decode_pool), study.py:
           header.read_header      every instance, no pixels; budgets checked from the header
           eligibility             one StudyInstanceUID; the frontal chest image; the rest ignored
           decode.decode_instance  pixels of the chosen image -> display image in [0, 1]
           preprocess              triage_common.preprocess (the one canonical preprocessing)
    infer
      -> batcher                   micro-batched inference on the bundle's graph
    conclude
      -> policy.decide             AUTO_REPORT / DEFER with reasons
      -> findings (+ overlays)     probability, threshold, present, per-label P(error), CAM
      -> routing                   worklist and priority
      -> StudyResult

Stages exchange the plain values of :mod:`service.core.types`; none knows about gRPC. Errors
are :mod:`service.core.errors` exceptions, turned into statuses at the front door. The deadline
and cancellation are checked between stages and while waiting for inference. Calibration and
evaluation (``triage calibrate``, ``triage evaluate``) call :meth:`TriagePipeline.prepare` and
:meth:`TriagePipeline.infer` themselves, so what they measure is what the server serves.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.bundle import Bundle
from service.core.enums import DeferReason
from service.core.errors import Cancelled, DeadlineExceeded
from service.core.types import (
    DecodedStudy,
    FindingResult,
    ModelOutput,
    PolicyDecision,
    StudyResult,
    Timings,
)
from service.stages.batcher import MicroBatcher
from service.stages.decode_pool import InstanceBytes, StudyDecoder
from service.stages.overlay import base_image, overlay_png
from service.stages.policy import Policy, PolicySource, decide
from service.stages.routing import Router, RoutingInput, route
from triage_common.logging import hash_uid
from triage_common.preprocess import preprocess

#: How often a request waiting for inference checks whether its client is still there.
_POLL_SECONDS = 0.25

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RequestOptions:
    """Per-request inputs besides the instances."""

    defer_cost: float | None = None
    include_overlay: bool = False
    calling_ae_title: str = ""
    deadline: float | None = None  # time.monotonic() seconds
    is_active: Callable[[], bool] = lambda: True


@dataclass
class RequestTrace:
    """What the request log line and the metrics report; filled in as stages complete."""

    study_hash: str = ""
    instances: int = 0
    bytes: int = 0
    stages_ms: dict[str, float] = field(default_factory=dict)
    decision: str = ""
    reasons: tuple[str, ...] = ()
    p_error: float | None = None
    batch_size: int = 0
    reduce_level: int = 0
    box: int = 1
    ignored: int = 0
    notes: tuple[str, ...] = ()
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU per step where it ran
    site: str = ""  # InstitutionName of the chosen image (per-site monitoring; never logged)


@dataclass(frozen=True)
class Prepared:
    """A study made ready for the model, with the policy and cost the request was given."""

    study: DecodedStudy
    policy: Policy
    defer_cost: float
    started: float  # time.perf_counter() when preparation began

    @property
    def image(self) -> F32:
        """The model input ``(1, S, S)``."""
        return self.study.image


class TriagePipeline:
    """Runs one study through every stage; thread-safe (per-request state stays per request)."""

    def __init__(
        self,
        bundle: Bundle,
        batcher: MicroBatcher,
        policy: PolicySource,
        decoder: StudyDecoder,
        *,
        router: Router = route,
    ) -> None:
        self.bundle = bundle
        self.batcher = batcher
        self.policy = policy
        self.decoder = decoder
        self.router = router

    @staticmethod
    def _check(options: RequestOptions, stage: str) -> None:
        if options.deadline is not None and time.monotonic() >= options.deadline:
            raise DeadlineExceeded(f"the deadline passed before {stage}")
        if not options.is_active():
            raise Cancelled(f"the client cancelled the call before {stage}")

    def run(
        self, instances: Sequence[InstanceBytes], options: RequestOptions, trace: RequestTrace
    ) -> StudyResult:
        """Triage one study; raises :mod:`service.core.errors` exceptions."""
        prepared = self.prepare(instances, options, trace)
        output = self.infer(prepared.image, options, trace)
        return self.conclude(prepared, output, options, trace)

    # -- prepare -----------------------------------------------------------------------------

    def prepare(
        self, instances: Sequence[InstanceBytes], options: RequestOptions, trace: RequestTrace
    ) -> Prepared:
        """The request's cost, then the study decoded and preprocessed by the decoder."""
        start = time.perf_counter()
        trace.instances = len(instances)
        trace.bytes = sum(
            len(i) if isinstance(i, bytes) else sum(len(c) for c in i) for i in instances
        )
        policy = self.policy.current()
        cost = policy.cost_for(options.defer_cost)
        self._check(options, "decoding")
        handover = time.thread_time()
        study = self.decoder.decode(
            instances, want_display=options.include_overlay, deadline=options.deadline
        )
        trace.cpu_ms["hand-over"] = (time.thread_time() - handover) * 1000.0
        trace.study_hash = hash_uid(study.study_instance_uid)
        trace.ignored, trace.notes = len(study.selection.ignored), study.selection.notes
        trace.reduce_level, trace.box = study.reduce_level, study.box
        wall_ms = (time.perf_counter() - start) * 1000.0
        preprocess_ms = study.cpu_ms.get("preprocess", 0.0)
        trace.stages_ms["decode"] = max(0.0, wall_ms - preprocess_ms)
        trace.stages_ms["preprocess"] = preprocess_ms
        trace.cpu_ms.update(study.cpu_ms)
        return Prepared(study, policy, cost, start)

    def preprocess(self, display: F32) -> F32:
        """The canonical preprocessing of the bundle for one display image: ``(1, S, S)``."""
        return preprocess(display, self.bundle.spec)

    # -- infer -------------------------------------------------------------------------------

    def infer(self, image: F32, options: RequestOptions, trace: RequestTrace) -> ModelOutput:
        """One model input through the micro-batcher; honours the deadline and cancellation."""
        self._check(options, "inference")
        future = self.batcher.submit(image, options.deadline)
        try:
            while True:
                timeout = _POLL_SECONDS
                if options.deadline is not None:
                    timeout = min(timeout, max(0.0, options.deadline - time.monotonic()))
                try:
                    output = future.result(timeout=timeout)
                    break
                except concurrent.futures.TimeoutError:
                    self._check(options, "inference finished")
        except BaseException:
            future.cancel()
            raise
        trace.stages_ms["queue"] = output.queue_ms
        trace.stages_ms["inference"] = output.inference_ms
        trace.cpu_ms["model"] = output.inference_cpu_ms
        trace.batch_size = output.batch_size
        return output

    # -- conclude ----------------------------------------------------------------------------

    def conclude(
        self,
        prepared: Prepared,
        output: ModelOutput,
        options: RequestOptions,
        trace: RequestTrace,
    ) -> StudyResult:
        """Decision, findings and routing: the study's result."""
        t_post, cpu_post = time.perf_counter(), time.thread_time()
        decision = decide(output.p_error, output.ood_score, prepared.policy, prepared.defer_cost)
        study = prepared.study
        display = study.display if options.include_overlay else None
        findings = self._findings(output, display)
        chosen = study.selection.chosen
        worklist, priority = self.router(
            routing_input(decision, findings, chosen.institution, options, chosen.modality)
        )
        total_ms = (time.perf_counter() - prepared.started) * 1000.0
        trace.stages_ms["decision"] = (time.perf_counter() - t_post) * 1000.0
        trace.cpu_ms["conclude"] = (time.thread_time() - cpu_post) * 1000.0
        trace.decision = decision.decision.name
        trace.reasons = tuple(r.name for r in decision.reasons)
        trace.p_error = decision.p_error
        trace.site = chosen.institution
        return StudyResult(
            study_instance_uid=study.study_instance_uid,
            sop_instance_uid=chosen.sop_instance_uid,
            decision=decision.decision,
            defer_reasons=decision.reasons,
            p_error=decision.p_error,
            p_error_raw=decision.p_error_raw,
            defer_cost=decision.defer_cost,
            ood_score=decision.ood_score,
            ood_threshold=decision.ood_threshold,
            policy_version=decision.policy_version,
            findings=findings,
            model_version=self.bundle.bundle_id,
            ignored=study.selection.ignored,
            timings=Timings(
                decode_ms=trace.stages_ms["decode"],
                preprocess_ms=trace.stages_ms["preprocess"],
                queue_ms=output.queue_ms,
                inference_ms=output.inference_ms,
                total_ms=total_ms,
            ),
            worklist=worklist,
            priority=priority,
            calling_ae_title=options.calling_ae_title,
            modality=chosen.modality,
            site=chosen.institution,
            model_input=prepared.image,
        )

    def _findings(self, output: ModelOutput, display: F32 | None) -> tuple[FindingResult, ...]:
        base = base_image(display) if display is not None else None
        out = []
        for i, label in enumerate(self.bundle.labels):
            probability = float(output.probabilities[i])
            threshold = float(self.bundle.thresholds[i])
            cam = output.cams[i]
            out.append(
                FindingResult(
                    label=label,
                    probability=probability,
                    threshold=threshold,
                    present=probability >= threshold,
                    p_error=float(output.p_error_labels[i]),
                    cam=cam,
                    overlay_png=overlay_png(base, cam) if base is not None else b"",
                )
            )
        return tuple(out)


def routing_input(
    decision: PolicyDecision,
    findings: Sequence[FindingResult],
    site: str,
    options: RequestOptions,
    modality: str,
) -> RoutingInput:
    """The plain values routing rules match on."""
    return RoutingInput(
        decision=decision.decision,
        defer_reasons=frozenset[DeferReason](decision.reasons),
        findings_present=frozenset(f.label for f in findings if f.present),
        probabilities={f.label: f.probability for f in findings},
        site=site,
        calling_ae_title=options.calling_ae_title,
        modality=modality,
    )
