"""The Worklist service behind triage: acknowledged means stored, replay or re-triage, reads
checked and amendable, history, and Watch events as snapshots that resume across restarts."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc, worklist_pb2, worklist_pb2_grpc
from tests.helpers.dicom_factory import chest
from tests.helpers.servers import (
    FakeModel,
    ServerFactory,
    WorklistServerFactory,
    open_channel,
    worklist_stubs,
)

LABELS = ("Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax")
ALL_STATES = list(worklist_pb2.ItemState.values())[1:]
#: AUTO_REPORT goes to ai-normal STAT, everything else to radiologist ROUTINE; no critical
#: finding raises a priority, so only the worklist's own rule keeps a STAT a STAT.
STAT_WHEN_AUTO = (
    {"name": "auto", "worklist": "ai-normal", "priority": "STAT", "decision": "AUTO_REPORT"},
    {"name": "rest", "worklist": "radiologist", "priority": "ROUTINE"},
)


def read(**values: bool | None) -> list[worklist_pb2.FinalLabel]:
    """Wire labels: every label absent unless given (None: not assessed)."""
    out = []
    for label in LABELS:
        value = values.get(label.replace(" ", "_"), False)
        if value is None:
            out.append(worklist_pb2.FinalLabel(label=label, not_assessed=True))
        else:
            out.append(worklist_pb2.FinalLabel(label=label, present=value))
    return out


def fake_worklist_server(
    server_factory: ServerFactory, tmp_path: Path, **dotted: Any
) -> tuple[triage_pb2_grpc.TriageStub, worklist_pb2_grpc.WorklistStub]:
    """A server on a worklist file whose model always says P(error) 0.1, and its two stubs.

    Costs up to 0.99 are allowed (``policy.max_defer_cost``), so a request's cost decides:
    0.99 auto-reports, 0.01 defers.
    """
    overrides: dict[str, Any] = {
        "worklist.path": str(tmp_path / "worklist.db"),
        "policy.max_defer_cost": 0.99,
        **dotted,
    }
    _, port = server_factory(model=FakeModel(), **overrides)
    return worklist_stubs(port)


def _send(triage: triage_pb2_grpc.TriageStub, data: bytes, cost: float) -> triage_pb2.TriageResult:
    reply: triage_pb2.TriageResult = triage.Triage(
        triage_pb2.TriageRequest(instances=[data], defer_cost=cost), timeout=30
    )
    return reply


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
    assert items[0].result == reply  # the stored result is the reply, item id included
    assert items[0].priority == reply.priority


def test_same_study_same_inputs_replays(worklist_server: WorklistServerFactory) -> None:
    """Sending a study again returns the stored result, marked replayed, and adds no item."""
    _, port = worklist_server()
    triage, worklist = worklist_stubs(port)
    data = chest(study_uid="1.2.826.0.1.3680043.10.999.1")
    first = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    again = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    assert again.replayed and again.worklist_item_id == first.worklist_item_id
    assert again.p_error == first.p_error  # the stored result replayed: exact is the point
    assert len(worklist.List(worklist_pb2.ListRequest(states=ALL_STATES), timeout=10).items) == 1


def test_another_cost_re_triages_a_claimed_item_for_its_reader(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A resend deciding otherwise attaches to the claimed item: same reader, new result shown,
    flagged, STAT kept; the reader's Complete then succeeds."""
    triage, worklist = fake_worklist_server(
        server_factory,
        tmp_path,
        **{"routing.rules": STAT_WHEN_AUTO, "routing.critical_findings": ()},
    )
    data = chest()
    first = _send(triage, data, 0.99)
    assert first.decision == triage_pb2.AUTO_REPORT and first.priority == triage_pb2.STAT
    worklist.Claim(worklist_pb2.ClaimRequest(item_id=first.worklist_item_id, reader="dr-a"))
    second = _send(triage, data, 0.01)
    assert second.decision == triage_pb2.DEFER and not second.replayed
    assert second.worklist_item_id == first.worklist_item_id
    assert (second.worklist, second.priority) == ("ai-normal", triage_pb2.STAT)
    (item,) = worklist.List(worklist_pb2.ListRequest(states=ALL_STATES), timeout=10).items
    assert item.state == worklist_pb2.CLAIMED and item.claimed_by == "dr-a"
    assert item.result.decision == triage_pb2.DEFER and item.priority == triage_pb2.STAT
    assert item.needs_review and "decision AUTO_REPORT -> DEFER" in item.review_reason
    done = worklist.Complete(
        worklist_pb2.CompleteRequest(item_id=item.item_id, reader="dr-a", final_labels=read())
    )
    assert done.state == worklist_pb2.COMPLETED


def test_a_completed_study_is_not_queued_again_and_priority_never_drops(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """After completion a re-triage is kept beside the read, flagged; a re-triage of a queued
    STAT study comes in STAT although its new rule says ROUTINE."""
    triage, worklist = fake_worklist_server(
        server_factory,
        tmp_path,
        **{"routing.rules": STAT_WHEN_AUTO, "routing.critical_findings": ()},
    )
    read_study, queued_study = chest(), chest()
    first = _send(triage, read_study, 0.99)
    worklist.Claim(worklist_pb2.ClaimRequest(item_id=first.worklist_item_id, reader="dr-a"))
    worklist.Complete(
        worklist_pb2.CompleteRequest(
            item_id=first.worklist_item_id, reader="dr-a", final_labels=read()
        )
    )
    later = _send(triage, read_study, 0.01)
    assert later.worklist_item_id == first.worklist_item_id
    (done,) = worklist.List(
        worklist_pb2.ListRequest(states=[worklist_pb2.COMPLETED]), timeout=10
    ).items
    assert done.result.decision == triage_pb2.AUTO_REPORT  # the result the read was made on
    assert done.latest_result.decision == triage_pb2.DEFER and done.needs_review
    assert not worklist.List(worklist_pb2.ListRequest(), timeout=10).items  # nothing to read

    stat = _send(triage, queued_study, 0.99)
    again = _send(triage, queued_study, 0.01)
    assert again.worklist_item_id != stat.worklist_item_id
    (queued,) = worklist.List(worklist_pb2.ListRequest(), timeout=10).items
    assert queued.item_id == again.worklist_item_id and queued.worklist == "radiologist"
    assert queued.priority == again.priority == triage_pb2.STAT


def test_reads_are_checked_amendable_and_in_the_history(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Complete refuses unknown or missing labels naming them; Amend corrects a read; History
    lists every change with who made it."""
    triage, worklist = fake_worklist_server(server_factory, tmp_path)
    reply = _send(triage, chest(), 0.2)
    item_id = reply.worklist_item_id
    worklist.Claim(worklist_pb2.ClaimRequest(item_id=item_id, reader="dr-a"))
    bogus = [*read(), worklist_pb2.FinalLabel(label="Bogus", present=True)]
    for labels, expected in (
        (bogus, "unknown label(s) ['Bogus']"),
        (read()[:3], "no value for label(s) ['Pneumothorax']"),
        ([*read(), read()[0]], "'Cardiomegaly' is given more than once"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            worklist.Complete(
                worklist_pb2.CompleteRequest(item_id=item_id, reader="dr-a", final_labels=labels)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in refused.value.details()
    done = worklist.Complete(
        worklist_pb2.CompleteRequest(
            item_id=item_id, reader="dr-a", final_labels=read(Cardiomegaly=None)
        )
    )
    assert [f.not_assessed for f in done.final_labels] == [True, False, False, False]
    amended = worklist.Amend(
        worklist_pb2.AmendRequest(
            item_id=item_id, reader="dr-a", final_labels=read(Edema=True), reason="edema missed"
        )
    )
    assert {f.label: f.present for f in amended.final_labels}["Edema"] is True
    events = worklist.History(worklist_pb2.HistoryRequest(item_id=item_id)).events
    assert [(e.kind, e.actor) for e in events] == [
        ("queued", "system"),
        ("claimed", "dr-a"),
        ("completed", "dr-a"),
        ("amended", "dr-a"),
    ]
    assert "edema missed" in events[-1].detail
    with pytest.raises(grpc.RpcError) as missing:
        worklist.History(worklist_pb2.HistoryRequest(item_id="no-such-item"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _events(port: int, after: int, count: int) -> list[worklist_pb2.WorklistEvent]:
    """The first ``count`` events after ``after`` (DEADLINE_EXCEEDED if fewer ever come)."""
    channel = open_channel(port)
    stream = worklist_pb2_grpc.WorklistStub(channel).Watch(
        worklist_pb2.WatchRequest(after_seq=after), timeout=20
    )
    out = []
    for event in stream:
        out.append(event)
        if len(out) == count:
            break
    stream.cancel()
    channel.close()
    return out


def test_watch_sends_snapshots_in_order_and_resumes_across_a_restart(
    worklist_server: WorklistServerFactory,
) -> None:
    """Each event carries the item as it was then; resuming after the last sequence number on a
    restarted server delivers exactly the later events, none missed or repeated."""
    server, port = worklist_server()
    triage, worklist = worklist_stubs(port)
    first = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    worklist.Claim(worklist_pb2.ClaimRequest(item_id=first.worklist_item_id, reader="dr-a"))
    worklist.Complete(
        worklist_pb2.CompleteRequest(
            item_id=first.worklist_item_id, reader="dr-a", final_labels=read()
        )
    )
    before = _events(port, 0, 3)
    assert [e.kind for e in before] == ["queued", "claimed", "completed"]
    assert [worklist_pb2.ItemState.Name(e.item.state) for e in before] == [
        "QUEUED",
        "CLAIMED",
        "COMPLETED",
    ]
    assert before[1].item.claimed_by == "dr-a" and not before[1].item.final_labels
    assert before[1].item.result.study_instance_uid == first.study_instance_uid
    server.stop(0).wait(10)

    _, port2 = worklist_server()
    triage2, worklist2 = worklist_stubs(port2)
    second = triage2.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    worklist2.Claim(worklist_pb2.ClaimRequest(item_id=second.worklist_item_id, reader="dr-b"))
    after = _events(port2, before[-1].seq, 2)
    assert [(e.kind, e.item.item_id) for e in after] == [
        ("queued", second.worklist_item_id),
        ("claimed", second.worklist_item_id),
    ]
    seqs = [e.seq for e in (*before, *after)]
    assert seqs == list(range(seqs[0], seqs[0] + 5))  # in order, none missed, none twice


def test_live_watch_sees_changes_of_its_worklist(worklist_server: WorklistServerFactory) -> None:
    """A Watch without after_seq starts now and follows claims and completions as they happen."""
    _, port = worklist_server()
    triage, worklist = worklist_stubs(port)
    events: list[worklist_pb2.WorklistEvent] = []
    watch = worklist.Watch(worklist_pb2.WatchRequest(), timeout=30)

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled below once the events are in
            events.extend(watch)

    watcher = threading.Thread(target=follow)
    watcher.start()
    reply = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    worklist.Claim(worklist_pb2.ClaimRequest(worklist=reply.worklist, reader="dr-a"), timeout=10)
    worklist.Complete(
        worklist_pb2.CompleteRequest(
            item_id=reply.worklist_item_id, reader="dr-a", final_labels=read()
        ),
        timeout=10,
    )
    waited = threading.Event()
    for _ in range(50):
        if len(events) >= 3:
            break
        waited.wait(0.1)
    watch.cancel()
    watcher.join(10)
    assert [e.kind for e in events[:3]] == ["queued", "claimed", "completed"]
    assert events[1].item.state == worklist_pb2.CLAIMED


def test_claiming_anothers_item_is_refused(worklist_server: WorklistServerFactory) -> None:
    """Completing an item claimed by another reader fails with FAILED_PRECONDITION."""
    _, port = worklist_server()
    triage, worklist = worklist_stubs(port)
    reply = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    worklist.Claim(worklist_pb2.ClaimRequest(item_id=reply.worklist_item_id, reader="dr-a"))
    with pytest.raises(grpc.RpcError) as denied:
        worklist.Complete(
            worklist_pb2.CompleteRequest(
                item_id=reply.worklist_item_id, reader="dr-b", final_labels=read()
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
