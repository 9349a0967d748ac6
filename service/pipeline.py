"""The one place where the stages are wired, in the one direction data flows:

    instances (bytes)
      -> decode.read_header        every instance, no pixels; limits checked from the header
      -> eligibility               one StudyInstanceUID; the frontal chest image; the rest ignored
      -> policy.cost_for           the request's defer cost (override checked against bounds)
      -> decode.decode_instance    pixels of the chosen image -> display image in [0, 1]
      -> preprocess                triage_common.preprocess (the one canonical preprocessing)
      -> batcher                   micro-batched ONNX Runtime inference
      -> policy.decide             AUTO_REPORT / DEFER with reasons
      -> findings (+ overlays)     probability, threshold, present, per-label P(error), CAM
      -> router                    worklist and priority
      -> StudyResult

Stages exchange plain dataclasses of numpy arrays, strings and floats; none knows about gRPC.
Errors are raised as :mod:`service.errors` exceptions and turned into statuses by the servicer.
The deadline and cancellation are checked between stages and while waiting for inference.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.batcher import MicroBatcher, ModelOutput
from service.bundle import Bundle
from service.config import DecodeConfig, EligibilityConfig
from service.decode import DecodeOptions, decode_instance, read_header
from service.eligibility import Ignored, select_frontal, study_uid
from service.errors import Cancelled, DeadlineExceeded
from service.overlay import base_image, overlay_png
from service.policy import PolicySource, decide
from service.routing import Router, route
from triage_common.logging import hash_uid
from triage_common.preprocess import preprocess

#: How often a request waiting for inference checks whether its client is still there.
_POLL_SECONDS = 0.25


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


@dataclass(frozen=True)
class FindingResult:
    """One label of the result."""

    label: str
    probability: float
    threshold: float
    present: bool
    p_error: float
    cam: npt.NDArray[np.float32]  # (h, w), CAM resolution
    overlay_png: bytes = b""


@dataclass(frozen=True)
class Timings:
    """Per-stage wall times in milliseconds."""

    decode_ms: float
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float


@dataclass(frozen=True)
class StudyResult:
    """The triage result of one study (plain values; the servicer converts it to protobuf)."""

    study_instance_uid: str
    sop_instance_uid: str
    decision: str
    defer_reasons: tuple[str, ...]
    p_error: float
    p_error_raw: float
    defer_cost: float
    ood_score: float
    ood_threshold: float
    policy_version: str
    findings: tuple[FindingResult, ...]
    model_version: str
    ignored: tuple[Ignored, ...]
    timings: Timings
    worklist: str = ""
    priority: str = ""
    calling_ae_title: str = ""  # for routing rules (issue #6)
    modality: str = ""  # of the image read
    site: str = ""  # InstitutionName of the image read (routing rules)


class TriagePipeline:
    """Runs one study through every stage; thread-safe (per-request state stays per request)."""

    def __init__(
        self,
        bundle: Bundle,
        batcher: MicroBatcher,
        policy: PolicySource,
        *,
        decode: DecodeConfig,
        eligibility: EligibilityConfig,
        router: Router = route,
    ) -> None:
        self.bundle = bundle
        self.batcher = batcher
        self.policy = policy
        self.eligibility = eligibility
        self.router = router
        self.decode_options = DecodeOptions.from_config(decode, bundle.spec.size)

    @staticmethod
    def _check(options: RequestOptions, stage: str) -> None:
        if options.deadline is not None and time.monotonic() >= options.deadline:
            raise DeadlineExceeded(f"the deadline passed before {stage}")
        if not options.is_active():
            raise Cancelled(f"the client cancelled the call before {stage}")

    def run(
        self, instances: Sequence[bytes], options: RequestOptions, trace: RequestTrace
    ) -> StudyResult:
        """Triage one study; raises :mod:`service.errors` exceptions."""
        start = time.perf_counter()
        trace.instances = len(instances)
        trace.bytes = sum(len(b) for b in instances)

        # decode (headers) + eligibility
        max_pixels = self.decode_options.max_pixels
        headers = [read_header(data, i, max_pixels) for i, data in enumerate(instances)]
        uid = study_uid(headers)
        trace.study_hash = hash_uid(uid)
        selection = select_frontal(headers, self.eligibility)
        trace.ignored, trace.notes = len(selection.ignored), selection.notes
        policy = self.policy.current()
        cost = policy.cost_for(options.defer_cost)
        self._check(options, "decoding")

        # decode (pixels)
        chosen = selection.chosen
        decoded = decode_instance(instances[chosen.index], chosen, self.decode_options)
        trace.reduce_level, trace.box = decoded.reduce_level, decoded.box
        t_decode = time.perf_counter()
        trace.stages_ms["decode"] = (t_decode - start) * 1000.0
        self._check(options, "preprocessing")

        # preprocess
        image = preprocess(decoded.display, self.bundle.spec)
        t_pre = time.perf_counter()
        trace.stages_ms["preprocess"] = (t_pre - t_decode) * 1000.0
        self._check(options, "inference")

        # inference (micro-batched)
        output = self._infer(image, options)
        trace.stages_ms["queue"] = output.queue_ms
        trace.stages_ms["inference"] = output.inference_ms
        trace.batch_size = output.batch_size

        # decision, findings, routing
        t_post = time.perf_counter()
        decision = decide(output.p_error, output.ood_score, policy, cost)
        findings = self._findings(output, decoded.display if options.include_overlay else None)
        total_ms = (time.perf_counter() - start) * 1000.0
        result = StudyResult(
            study_instance_uid=uid,
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
            ignored=selection.ignored,
            calling_ae_title=options.calling_ae_title,
            modality=chosen.modality,
            site=chosen.institution,
            timings=Timings(
                decode_ms=trace.stages_ms["decode"],
                preprocess_ms=trace.stages_ms["preprocess"],
                queue_ms=output.queue_ms,
                inference_ms=output.inference_ms,
                total_ms=total_ms,
            ),
        )
        worklist, priority = self.router(result)
        trace.stages_ms["decision"] = (time.perf_counter() - t_post) * 1000.0
        trace.decision, trace.reasons, trace.p_error = (
            decision.decision,
            decision.reasons,
            decision.p_error,
        )
        return dataclasses.replace(result, worklist=worklist, priority=priority)

    def _infer(self, image: npt.NDArray[np.float32], options: RequestOptions) -> ModelOutput:
        future = self.batcher.submit(image, options.deadline)
        try:
            while True:
                timeout = _POLL_SECONDS
                if options.deadline is not None:
                    timeout = min(timeout, max(0.0, options.deadline - time.monotonic()))
                try:
                    return future.result(timeout=timeout)
                except concurrent.futures.TimeoutError:
                    self._check(options, "inference finished")
        except BaseException:
            future.cancel()
            raise

    def _findings(
        self, output: ModelOutput, display: npt.NDArray[np.float32] | None
    ) -> tuple[FindingResult, ...]:
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
