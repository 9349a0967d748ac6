"""The outbox in the worklist store (SQLite and PostgreSQL, the same assertions): written with
the result, leased, retried, marked, pruned."""

from __future__ import annotations

import pytest

from service.core.enums import Decision, Priority
from service.core.errors import WorklistError
from service.worklist.schema import VERSION
from service.worklist.store import (
    OUTBOX_FAILED,
    OUTBOX_QUEUED,
    OUTBOX_SENT,
    STATES,
    NewObject,
    Placement,
    Triaged,
    WorklistStore,
)
from tests.helpers.worklist_stores import StoreFactory


class Clock:
    """A settable clock for leases and due times."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _triaged(study: str, cost: float = 0.2) -> Triaged:
    return Triaged(
        study_uid=study,
        bundle_id="b1",
        policy_version="p1",
        defer_cost=cost,
        decision=Decision.DEFER,
        worklist="radiologist",
        priority=Priority.ROUTINE,
        labels=("Edema",),
    )


def _objects(tag: str, destinations: tuple[str, ...] = ("pacs", "viewer")) -> list[NewObject]:
    return [
        NewObject("SR", "1.2.840.10008.5.1.4.1.1.88.34", f"1.2.3.{tag}.1", "1.2.840.10008.1.2.1",
                  b"sr-bytes", destinations),
        NewObject("SEG", "1.2.840.10008.5.1.4.1.1.66.4", f"1.2.3.{tag}.2",
                  "1.2.840.10008.1.2.4.90", b"seg-bytes", ("pacs",)),
    ]  # fmt: skip


@pytest.fixture(name="clock")
def fixture_clock() -> Clock:
    """The store's clock."""
    return Clock()


@pytest.fixture(name="store")
def fixture_store(store_factory: StoreFactory, clock: Clock) -> WorklistStore:
    """A fresh store (an SQLite file, or a PostgreSQL database) on a hand clock."""
    return store_factory.open(clock=clock)


def test_objects_and_rows_are_written_with_the_result_once(store: WorklistStore) -> None:
    """A recorded result gets its objects and one row per object and destination; a replay
    writes none; the placement the objects are built for is the stored one."""
    seen: list[Placement] = []

    def objects(placement: Placement) -> list[NewObject]:
        seen.append(placement)
        return _objects("a")

    first = store.record(_triaged("s1"), lambda p: b"r", objects)
    again = store.record(_triaged("s1"), lambda p: b"r", objects)
    assert store.schema_version == VERSION == 4
    assert [p.item_id for p in seen] == [first.item.item_id]
    assert again.replayed and again.result_id == first.result_id
    rows = store.list_outbox()
    assert sorted((r.kind, r.destination) for r in rows) == [
        ("SEG", "pacs"), ("SR", "pacs"), ("SR", "viewer"),
    ]  # fmt: skip
    assert all(r.state == OUTBOX_QUEUED and r.attempts == 0 and r.data == b"" for r in rows)
    stored = store.result_objects(first.result_id)
    assert [(o.kind, o.data) for o in stored] == [("SR", b"sr-bytes"), ("SEG", b"seg-bytes")]


def test_a_failing_object_build_records_nothing(store: WorklistStore) -> None:
    """The result, its item, its audit and its outbox rows commit together or not at all."""

    def broken(placement: Placement) -> list[NewObject]:
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        store.record(_triaged("s1"), lambda p: b"r", broken)
    assert store.list_items(states=STATES) == []
    assert store.list_outbox() == [] and store.latest_seq() == 0


def test_leases_retries_and_marks(store: WorklistStore, clock: Clock) -> None:
    """A leased row is invisible to other senders until its lease expires; a failed attempt
    makes it due later; SENT is final; only the holder may mark; a give-up is FAILED."""
    store.record(_triaged("s1"), lambda p: b"r", lambda p: _objects("a", ("pacs",)))
    rows = store.claim_outbox("pacs", "sender-1", lease_s=30)
    assert [r.kind for r in rows] == ["SR", "SEG"] and rows[0].data == b"sr-bytes"
    assert store.claim_outbox("pacs", "sender-2") == []
    clock.now += 31  # sender-1 died: its lease ran out
    again = store.claim_outbox("pacs", "sender-2", lease_s=30)
    assert [r.outbox_id for r in again] == [r.outbox_id for r in rows]
    assert not store.outbox_sent(rows[0].outbox_id, "sender-1")  # no longer the holder
    assert store.outbox_sent(again[0].outbox_id, "sender-2")
    assert store.outbox_retry(again[1].outbox_id, "sender-2", "refused", clock.now + 5)
    assert store.claim_outbox("pacs", "sender-2") == []  # not due yet
    clock.now += 6
    (due,) = store.claim_outbox("pacs", "sender-2")
    assert due.attempts == 1 and due.last_error == "refused"
    assert store.outbox_retry(due.outbox_id, "sender-2", "refused again", 0.0, give_up=True)
    states = {r.kind: (r.state, r.attempts) for r in store.list_outbox()}
    assert states == {"SR": (OUTBOX_SENT, 1), "SEG": (OUTBOX_FAILED, 2)}
    assert store.claim_outbox("pacs", "sender-2") == []
    with pytest.raises(WorklistError):
        store.claim_outbox("pacs", "")


def test_sent_objects_are_pruned_once_every_destination_has_them(
    store: WorklistStore,
) -> None:
    """An object's bytes go once all its rows are SENT (unless kept); stats follow the rows."""
    recorded = store.record(_triaged("s1"), lambda p: b"r", lambda p: _objects("a"))
    for destination in ("pacs", "viewer"):
        for row in store.claim_outbox(destination, "s"):
            if row.kind == "SR":
                assert store.outbox_sent(row.outbox_id, "s")
            else:
                assert store.outbox_sent(row.outbox_id, "s", prune=False)
        data = {o.kind: o.data for o in store.result_objects(recorded.result_id)}
        if destination == "pacs":  # the SR still waits for the viewer
            assert data == {"SR": b"sr-bytes", "SEG": b"seg-bytes"}
    assert {o.kind: o.data for o in store.result_objects(recorded.result_id)} == {
        "SR": b"", "SEG": b"seg-bytes",
    }  # fmt: skip
    stats = store.outbox_stats()
    assert (stats["pacs"].sent, stats["viewer"].sent, stats["pacs"].queued) == (2, 1, 0)
    assert stats["pacs"].oldest_queued is None
    with pytest.raises(WorklistError):
        store.list_outbox(states=("LOST",))
