"""The ``triage.v1.Worklist`` gRPC service over a :class:`WorklistStore`.

List (filters; by priority, then age), Claim, Release, Complete and Amend (final labels: a value
for every label of the item's result, or ``not_assessed``), History (an item's audit entries)
and Watch (a server stream of changes, read from the store's audit log so every replica's
changes show; between reads it waits on the store: PostgreSQL wakes it on NOTIFY). Each
event carries the item as it was right after that change (the snapshot the store wrote with
the audit entry, in the same transaction), in audit order; ``after_seq`` resumes a stream after
the last event a client saw, across server restarts, without gaps or repeats. Store exceptions
become gRPC statuses at the service's one boundary (``service.rpc.status``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, TypeVar

import grpc

from service._proto.triage.v1 import triage_pb2, worklist_pb2, worklist_pb2_grpc
from service.core.enums import Priority
from service.core.errors import NotFound, WorklistError
from service.rpc.status import status_for
from service.worklist.explanations import StoredExplanation
from service.worklist.store import CLAIMED, QUEUED, STATES, Event, Item, Read, WorklistStore

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_LEASE_S = 900.0


def _final_label(label: str, value: bool | None) -> worklist_pb2.FinalLabel:
    if value is None:
        return worklist_pb2.FinalLabel(label=label, not_assessed=True)
    return worklist_pb2.FinalLabel(label=label, present=value)


def explanation_to_proto(
    stored: StoredExplanation, include_images: bool
) -> worklist_pb2.Explanation:
    """Store row -> wire message: the worker's stored message (DONE) with the row's state."""
    message = worklist_pb2.Explanation()
    if stored.payload:
        message.ParseFromString(stored.payload)
    if not include_images:
        for counterfactual in message.counterfactuals:
            counterfactual.gif = b""
            counterfactual.strip_png = b""
    message.item_id = stored.item_id
    message.study_instance_uid = stored.study_uid
    message.state = f"EXPLANATION_{stored.state}"  # type: ignore[assignment]
    message.model_version = stored.bundle_id
    message.error = stored.last_error
    message.attempts = stored.attempts
    message.created_unix = stored.created
    message.updated_unix = stored.updated
    if stored.explainer:
        message.explainer = stored.explainer
    return message


def item_to_proto(item: Item) -> worklist_pb2.WorklistItem:
    """Store item -> wire message (the stored TriageResult bytes are parsed back)."""
    message = worklist_pb2.WorklistItem(
        item_id=item.item_id,
        study_instance_uid=item.study_uid,
        worklist=item.worklist,
        priority=item.priority.name,
        state=item.state,
        result=triage_pb2.TriageResult.FromString(item.result),
        claimed_by=item.claimed_by,
        lease_expires_unix=item.lease_expires,
        created_unix=item.created,
        updated_unix=item.updated,
        final_labels=[_final_label(k, v) for k, v in sorted(item.final_labels.items())],
        superseded_by=item.superseded_by,
        needs_review=item.needs_review,
        review_reason=item.review_reason,
    )
    if item.latest_result:
        message.latest_result.CopyFrom(triage_pb2.TriageResult.FromString(item.latest_result))
    return message


def event_to_proto(event: Event) -> worklist_pb2.WorklistEvent:
    """Audit entry -> wire event; an entry without a snapshot (schema 1) carries id and state."""
    if event.item is not None:
        item = item_to_proto(event.item)
    else:
        item = worklist_pb2.WorklistItem(item_id=event.item_id, state=event.to_state)
    return worklist_pb2.WorklistEvent(
        kind=event.action,
        item=item,
        seq=event.seq,
        at_unix=event.at,
        actor=event.actor,
        from_state=event.from_state or "ITEM_STATE_UNSPECIFIED",
        detail=event.detail,
    )


def read_from_proto(labels: Iterable[worklist_pb2.FinalLabel]) -> Read:
    """The wire labels as a read (``not_assessed`` -> None); a label given twice is refused."""
    read: Read = {}
    for f in labels:
        if f.label in read:
            raise WorklistError(f"label {f.label!r} is given more than once")
        read[f.label] = None if f.not_assessed else f.present
    return read


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    code, message = status_for(exc)
    context.abort(code, message)


def _guard(context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    try:
        return call()
    except Exception as exc:  # the one boundary: every error becomes a status
        _abort(context, exc)
        raise  # unreachable: abort raises


class WorklistServicer(worklist_pb2_grpc.WorklistServicer):
    """gRPC front of a worklist store."""

    def __init__(self, store: WorklistStore, poll_seconds: float = 0.2) -> None:
        self.store = store
        self.poll_seconds = poll_seconds

    def List(
        self, request: worklist_pb2.ListRequest, context: grpc.ServicerContext
    ) -> worklist_pb2.ListResponse:
        def call() -> worklist_pb2.ListResponse:
            states = [worklist_pb2.ItemState.Name(s) for s in request.states] or [QUEUED, CLAIMED]
            if set(states) - set(STATES):
                raise WorklistError(f"unknown item state(s) in {states}")
            limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
            floor = Priority(max(int(request.min_priority), int(Priority.ROUTINE)))
            items = self.store.list_items(
                request.worklist, states, floor, limit, needs_review=request.needs_review
            )
            return worklist_pb2.ListResponse(items=[item_to_proto(i) for i in items])

        return _guard(context, call)

    def Claim(
        self, request: worklist_pb2.ClaimRequest, context: grpc.ServicerContext
    ) -> worklist_pb2.WorklistItem:
        lease = request.lease_seconds or DEFAULT_LEASE_S
        return _guard(
            context,
            lambda: item_to_proto(
                self.store.claim(request.reader, request.item_id, request.worklist, lease)
            ),
        )

    def Release(
        self, request: worklist_pb2.ReleaseRequest, context: grpc.ServicerContext
    ) -> worklist_pb2.WorklistItem:
        return _guard(
            context, lambda: item_to_proto(self.store.release(request.item_id, request.reader))
        )

    def Complete(
        self, request: worklist_pb2.CompleteRequest, context: grpc.ServicerContext
    ) -> worklist_pb2.WorklistItem:
        return _guard(
            context,
            lambda: item_to_proto(
                self.store.complete(
                    request.item_id, request.reader, read_from_proto(request.final_labels)
                )
            ),
        )

    def Amend(
        self, request: worklist_pb2.AmendRequest, context: grpc.ServicerContext
    ) -> worklist_pb2.WorklistItem:
        return _guard(
            context,
            lambda: item_to_proto(
                self.store.amend(
                    request.item_id,
                    request.reader,
                    read_from_proto(request.final_labels),
                    request.reason,
                )
            ),
        )

    def History(
        self, request: worklist_pb2.HistoryRequest, context: grpc.ServicerContext
    ) -> worklist_pb2.HistoryResponse:
        return _guard(
            context,
            lambda: worklist_pb2.HistoryResponse(
                events=[event_to_proto(e) for e in self.store.history(request.item_id)]
            ),
        )

    def GetExplanation(
        self, request: worklist_pb2.GetExplanationRequest, context: grpc.ServicerContext
    ) -> worklist_pb2.Explanation:
        def get() -> worklist_pb2.Explanation:
            stored = self.store.explanation(request.item_id)
            if stored is None:
                raise NotFound(
                    f"item {request.item_id} has no explanation: only deferred results get one, "
                    "and only while explain.enabled is on"
                )
            return explanation_to_proto(stored, request.include_images)

        return _guard(context, get)

    def Watch(
        self, request: worklist_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[worklist_pb2.WorklistEvent]:
        if request.HasField("after_seq"):
            seq = int(request.after_seq)
        else:
            seq = _guard(context, self.store.latest_seq)
        while context.is_active():
            events = _guard(context, partial(self.store.events_since, seq))
            for event in events:
                seq = event.seq
                if request.worklist and (
                    event.item is None or event.item.worklist != request.worklist
                ):
                    continue
                yield event_to_proto(event)
            if not events:
                _guard(context, partial(self.store.wait_for_events, seq, self.poll_seconds))


def add_to_server(store: WorklistStore, server: grpc.Server, **kwargs: Any) -> WorklistServicer:
    """Register the Worklist service on ``server``."""
    servicer = WorklistServicer(store, **kwargs)
    worklist_pb2_grpc.add_WorklistServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return servicer
