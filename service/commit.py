"""The commit both front doors share: a result in its wire form, stored with its worklist item.

:func:`to_proto` turns a :class:`~service.core.types.StudyResult` into the ``TriageResult``
message (the form the worklist stores and the gRPC client receives); :func:`commit_result`
names who set the cost and who sent the study, records the result in the worklist store
(:meth:`~service.worklist.store.WorklistStore.record`: NEW, REQUEUED, ATTACHED or REPLAYED) with
the DICOM objects to send, in one transaction, and returns the message exactly as stored (item
id and placed priority included), or the stored one marked ``replayed``.

The gRPC servicer (:mod:`service.rpc.triage_servicer`) and the DICOM Storage SCP
(:mod:`service.dicom.intake`) both call it; neither stores a result any other way. Protobuf
messages only: nothing here imports gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service._proto.triage.v1 import triage_pb2
from service.core.enums import Decision
from service.core.types import StudyResult
from service.worklist.explanations import ExplainRequest
from service.worklist.store import REPLAYED, Objects, Placement, Triaged, WorklistStore


def to_proto(result: StudyResult) -> triage_pb2.TriageResult:
    """The protobuf form of a :class:`StudyResult`."""
    t = result.timings
    return triage_pb2.TriageResult(
        study_instance_uid=result.study_instance_uid,
        decision=result.decision.name,  # protobuf takes an enum by its name
        p_error=result.p_error,
        defer_cost=result.defer_cost,
        findings=[
            triage_pb2.Finding(
                label=f.label,
                probability=f.probability,
                present=f.present,
                heatmap=triage_pb2.Heatmap(
                    height=int(f.cam.shape[0]),
                    width=int(f.cam.shape[1]),
                    values=f.cam.ravel().tolist(),
                ),
                threshold=f.threshold,
                p_error=f.p_error,
                overlay_png=f.overlay_png,
            )
            for f in result.findings
        ],
        worklist=result.worklist,
        model_version=result.model_version,
        defer_reasons=[r.name for r in result.defer_reasons],
        priority=result.priority.name,
        ood_score=result.ood_score,
        ood_threshold=result.ood_threshold,
        sop_instance_uid=result.sop_instance_uid,
        ignored_instances=[
            triage_pb2.IgnoredInstance(sop_instance_uid=i.sop_instance_uid, reason=i.reason)
            for i in result.ignored
        ],
        timings=triage_pb2.StageTimings(
            decode_ms=t.decode_ms,
            preprocess_ms=t.preprocess_ms,
            queue_ms=t.queue_ms,
            inference_ms=t.inference_ms,
            total_ms=t.total_ms,
        ),
        policy_version=result.policy_version,
        p_error_raw=result.p_error_raw,
        site=result.site,
    )


def explain_request(
    result: StudyResult,
    max_findings: int,
    source_header: bytes = b"",
    destinations: Sequence[str] = (),
) -> ExplainRequest | None:
    """The counterfactual job of a deferred result (None: not deferred, or ``max_findings`` 0).

    The findings explained are the present ones, most probable first, at most
    ``max_findings``; a deferred study with none present gets its most probable finding. The
    source header travels only with destinations for the Secondary Capture."""
    if max_findings <= 0 or result.decision is not Decision.DEFER or result.model_input is None:
        return None
    if not result.findings:
        return None
    ranked = sorted(result.findings, key=lambda f: -f.probability)
    chosen = [f for f in ranked if f.present][:max_findings] or ranked[:1]
    image = np.ascontiguousarray(result.model_input, dtype=np.float32)
    return ExplainRequest(
        model_input=image.tobytes(),
        size=int(image.shape[-1]),
        labels=tuple(f.label for f in chosen),
        source_header=source_header if destinations else b"",
        destinations=tuple(destinations),
    )


def cost_set_by(result: StudyResult, from_request: bool) -> str:
    """Who chose the defer cost: ``request``, ``policy <id>`` or ``deployment``."""
    if from_request:
        return "request"
    if result.policy_version:
        return f"policy {result.policy_version}"
    return "deployment"


@dataclass(frozen=True)
class Committed:
    """What the commit returns: the message as stored (or replayed) and what happened."""

    reply: triage_pb2.TriageResult
    outcome: str = ""  # NEW, REQUEUED, ATTACHED, REPLAYED; "" with the worklist off
    result_id: int = 0

    @property
    def replayed(self) -> bool:
        """True when the stored result of the same decision inputs was returned."""
        return self.outcome == REPLAYED


def commit_result(
    store: WorklistStore | None,
    result: StudyResult,
    reply: triage_pb2.TriageResult,
    *,
    caller: str,
    cost_from_request: bool,
    objects: Objects | None = None,
    explain: ExplainRequest | None = None,
) -> Committed:
    """Store ``result`` (wire form ``reply``) with its worklist item and ``objects``.

    The message is acknowledged to a client only after this returns (the transaction is on
    disk). A resend with the same decision inputs (bundle, policy, cost) returns the stored
    result marked ``replayed`` and writes nothing, objects included. ``explain``
    (:func:`explain_request`) queues the result's counterfactual job in the same transaction.
    """
    reply.caller = caller
    reply.defer_cost_set_by = cost_set_by(result, cost_from_request)
    if store is None:
        return Committed(reply)

    def encode(placement: Placement) -> bytes:
        reply.worklist_item_id = placement.item_id
        reply.worklist = placement.worklist
        reply.priority = placement.priority.name  # type: ignore[assignment]
        return reply.SerializeToString()

    recorded = store.record(
        Triaged(
            study_uid=result.study_instance_uid,
            bundle_id=result.model_version,
            policy_version=result.policy_version,
            defer_cost=result.defer_cost,
            decision=result.decision,
            worklist=result.worklist,
            priority=result.priority,
            labels=tuple(f.label for f in result.findings),
            findings_present=tuple(f.label for f in result.findings if f.present),
            cost_set_by=reply.defer_cost_set_by,
            caller=reply.caller,
            explain=explain,
        ),
        encode,
        objects,
    )
    if not recorded.replayed:
        return Committed(reply, recorded.outcome, recorded.result_id)
    stored = triage_pb2.TriageResult.FromString(recorded.result)
    stored.replayed = True
    return Committed(stored, recorded.outcome, recorded.result_id)
