"""The Worklist service behind triage: acknowledged means stored, replays, reads, restarts."""

from __future__ import annotations

import contextlib
import threading

import grpc
import pytest

from service._proto.triage.v1 import triage_pb2, worklist_pb2
from tests.helpers.dicom_factory import chest
from tests.helpers.servers import WorklistServerFactory, worklist_stubs


def test_result_is_on_its_worklist_when_acknowledged(
    worklist_server: WorklistServerFactory,
) -> None:
    """Every acknowledged result names its worklist item, which List then shows."""
    _, port = worklist_server()
    triage, worklist = worklist_stubs(port)
    reply = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    assert reply.worklist_item_id and reply.worklist and not reply.replayed
    items = worklist.List(worklist_pb2.ListRequest(worklist=reply.worklist), timeout=10).items
    assert [i.item_id for i in items] == [reply.worklist_item_id]
    assert items[0].result.study_instance_uid == reply.study_instance_uid
    assert items[0].priority == reply.priority


def test_same_study_same_bundle_replays(worklist_server: WorklistServerFactory) -> None:
    """Sending a study again returns the stored result, marked replayed, and adds no item."""
    _, port = worklist_server()
    triage, worklist = worklist_stubs(port)
    data = chest(study_uid="1.2.826.0.1.3680043.10.999.1")
    first = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    again = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    assert again.replayed and again.worklist_item_id == first.worklist_item_id
    assert again.p_error == first.p_error  # the stored result replayed: exact is the point
    states = list(worklist_pb2.ItemState.values())[1:]
    assert len(worklist.List(worklist_pb2.ListRequest(states=states), timeout=10).items) == 1


def test_claim_complete_and_watch_over_grpc(worklist_server: WorklistServerFactory) -> None:
    """A reader claims and completes an item; a Watch stream sees both changes."""
    _, port = worklist_server()
    triage, worklist = worklist_stubs(port)
    events: list[str] = []
    watch = worklist.Watch(worklist_pb2.WatchRequest(), timeout=30)

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled below once the events are in
            events.extend(e.kind for e in watch)

    watcher = threading.Thread(target=follow)
    watcher.start()
    reply = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    claimed = worklist.Claim(
        worklist_pb2.ClaimRequest(worklist=reply.worklist, reader="dr-a"), timeout=10
    )
    assert claimed.item_id == reply.worklist_item_id and claimed.state == worklist_pb2.CLAIMED
    with pytest.raises(grpc.RpcError) as denied:
        worklist.Complete(
            worklist_pb2.CompleteRequest(item_id=claimed.item_id, reader="dr-b"), timeout=10
        )
    assert denied.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no final labels given
    done = worklist.Complete(
        worklist_pb2.CompleteRequest(
            item_id=claimed.item_id,
            reader="dr-a",
            final_labels=[worklist_pb2.FinalLabel(label="Edema", present=True)],
        ),
        timeout=10,
    )
    assert done.state == worklist_pb2.COMPLETED
    deadline = threading.Event()
    for _ in range(50):
        if {"queued", "claimed", "completed"} <= set(events):
            break
        deadline.wait(0.1)
    watch.cancel()
    watcher.join(10)
    assert {"queued", "claimed", "completed"} <= set(events)


def test_claiming_anothers_item_is_refused(worklist_server: WorklistServerFactory) -> None:
    """Completing an item claimed by another reader fails with FAILED_PRECONDITION."""
    _, port = worklist_server()
    triage, worklist = worklist_stubs(port)
    reply = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    worklist.Claim(worklist_pb2.ClaimRequest(item_id=reply.worklist_item_id, reader="dr-a"))
    with pytest.raises(grpc.RpcError) as denied:
        worklist.Complete(
            worklist_pb2.CompleteRequest(
                item_id=reply.worklist_item_id,
                reader="dr-b",
                final_labels=[worklist_pb2.FinalLabel(label="Edema", present=False)],
            )
        )
    assert denied.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as missing:
        worklist.Claim(worklist_pb2.ClaimRequest(item_id="no-such-item", reader="dr-a"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_worklist_survives_a_server_restart(worklist_server: WorklistServerFactory) -> None:
    """Items acknowledged before a restart are listed after it, and replays still hold."""
    server, port = worklist_server()
    triage, _ = worklist_stubs(port)
    data = chest()
    first = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    server.stop(0).wait(10)
    _, port2 = worklist_server()
    triage2, worklist2 = worklist_stubs(port2)
    assert [i.item_id for i in worklist2.List(worklist_pb2.ListRequest()).items] == [
        first.worklist_item_id
    ]
    assert triage2.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30).replayed
