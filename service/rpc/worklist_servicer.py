"""The ``triage.v1.Worklist`` gRPC service over a :class:`WorklistStore`.

List (filters; by priority, then age), Claim, Release, Complete (final labels) and Watch (a
server stream of changes, polled from the store's audit log so every replica's changes show).
Store exceptions become gRPC statuses at the service's one boundary (``service.core.errors``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import grpc

from service._proto.triage.v1 import triage_pb2, worklist_pb2, worklist_pb2_grpc
from service.core.enums import Priority
from service.core.errors import WorklistError
from service.rpc.status import status_for
from service.worklist.store import CLAIMED, QUEUED, STATES, Item, WorklistStore

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_LEASE_S = 900.0


def item_to_proto(item: Item) -> worklist_pb2.WorklistItem:
    """Store item -> wire message (the stored TriageResult bytes are parsed back)."""
    return worklist_pb2.WorklistItem(
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
        final_labels=[
            worklist_pb2.FinalLabel(label=k, present=v)
            for k, v in sorted(item.final_labels.items())
        ],
        superseded_by=item.superseded_by,
    )


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
            items = self.store.list_items(request.worklist, states, floor, limit)
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
        labels = {f.label: f.present for f in request.final_labels}
        return _guard(
            context,
            lambda: item_to_proto(self.store.complete(request.item_id, request.reader, labels)),
        )

    def Watch(
        self, request: worklist_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[worklist_pb2.WorklistEvent]:
        seq = self.store.latest_seq()
        while context.is_active():
            events = _guard(context, partial(self.store.events_since, seq))
            for event in events:
                seq = event.seq
                item = _guard(context, partial(self.store.get, event.item_id))
                if request.worklist and item.worklist != request.worklist:
                    continue
                yield worklist_pb2.WorklistEvent(kind=event.action, item=item_to_proto(item))
            if not events:
                time.sleep(self.poll_seconds)


def add_to_server(store: WorklistStore, server: grpc.Server, **kwargs: Any) -> WorklistServicer:
    """Register the Worklist service on ``server``."""
    servicer = WorklistServicer(store, **kwargs)
    worklist_pb2_grpc.add_WorklistServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return servicer
