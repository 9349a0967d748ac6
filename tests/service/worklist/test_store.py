"""The worklist store on both backends (SQLite, PostgreSQL: the same assertions): replay or
re-triage, placement rules, reads, audit snapshots, restarts; SQLite's own file settings and
migrations."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from service.core.enums import Decision, Priority
from service.core.errors import Conflict, NotFound, WorklistError
from service.worklist.schema import MIGRATIONS, VERSION
from service.worklist.store import (
    ATTACHED,
    CLAIMED,
    COMPLETED,
    NEW,
    QUEUED,
    REPLAYED,
    REQUEUED,
    STATES,
    SUPERSEDED,
    Encoder,
    Placement,
    SqliteWorklistStore,
    Triaged,
    WorklistStore,
)
from tests.helpers.worklist_stores import StoreFactory

LABELS = ("Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax")
ALL_ABSENT: dict[str, bool | None] = dict.fromkeys(LABELS, False)


class FakeClock:
    """A settable clock for lease expiry."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Placements:
    """An encoder that stores ``data`` and remembers every placement it was asked for."""

    def __init__(self, data: bytes = b"r") -> None:
        self.data = data
        self.seen: list[Placement] = []

    def __call__(self, placement: Placement) -> bytes:
        self.seen.append(placement)
        return self.data


def result(data: bytes) -> Encoder:
    """An encoder that stores ``data`` whatever the placement."""
    return Placements(data)


def triaged(
    study: str = "1.2.3",
    bundle: str = "bundleA",
    *,
    cost: float = 0.2,
    policy: str = "",
    decision: Decision = Decision.DEFER,
    worklist: str = "radiologist",
    priority: Priority = Priority.ROUTINE,
    present: tuple[str, ...] = (),
) -> Triaged:
    """A result to record (four labels; ``present`` are the findings present)."""
    return Triaged(
        study_uid=study,
        bundle_id=bundle,
        policy_version=policy,
        defer_cost=cost,
        decision=decision,
        worklist=worklist,
        priority=priority,
        labels=LABELS,
        findings_present=present,
        cost_set_by="deployment",
        caller="peer:127.0.0.1",
    )


@pytest.fixture(name="clock")
def fixture_clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


@pytest.fixture(name="store")
def fixture_store(store_factory: StoreFactory, clock: FakeClock) -> WorklistStore:
    """An empty worklist database (an SQLite file, or a PostgreSQL database) on a hand clock."""
    return store_factory.open(clock=clock)


def test_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    """The SQLite database runs in WAL mode with synchronous FULL, so commits are durable."""
    db = SqliteWorklistStore(tmp_path / "worklist.db")._db()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_same_decision_inputs_replay_the_stored_result(store: WorklistStore) -> None:
    """The same study, bundle, policy and cost again returns the stored bytes and writes nothing."""
    first = store.record(triaged(), result(b"r1"))
    seq = store.latest_seq()
    again = store.record(triaged(worklist="ai-normal", priority=Priority.STAT), result(b"r2"))
    assert first.outcome == NEW and again.outcome == REPLAYED and again.replayed
    assert again.result == b"r1" and again.item == first.item
    assert store.latest_seq() == seq  # a replay is not a change
    assert len(store.list_items(states=STATES)) == 1


def test_another_cost_re_decides_and_audits_both(store: WorklistStore) -> None:
    """A resend with another defer cost is recorded as a re-triage, not answered from storage."""
    first = store.record(triaged(cost=0.99, decision=Decision.AUTO_REPORT), result(b"auto"))
    second = store.record(triaged(cost=0.01, decision=Decision.DEFER), result(b"defer"))
    assert second.outcome == REQUEUED and second.result == b"defer"
    assert second.superseded == (first.item.item_id,)
    history = store.history(first.item.item_id) + store.history(second.item.item_id)
    details = " | ".join(e.detail for e in history)
    assert "AUTO_REPORT at cost 0.99" in details and "DEFER at cost 0.01" in details
    assert "cost 0.99 -> 0.01" in details and "decision AUTO_REPORT -> DEFER" in details
    # the resend of the second request is the one that replays now
    assert store.record(triaged(cost=0.01), result(b"x")).result == b"defer"


def test_another_policy_version_re_decides(store: WorklistStore) -> None:
    """A result decided under a newly loaded policy is a re-triage, not a replay."""
    store.record(triaged(policy="p1"), result(b"p1"))
    assert store.record(triaged(policy="p2"), result(b"p2")).outcome == REQUEUED


def test_new_bundle_supersedes_a_queued_item(store: WorklistStore) -> None:
    """Re-triage of a QUEUED item with another bundle queues a new item and supersedes the old."""
    old = store.record(triaged(), result(b"r1")).item
    new = store.record(triaged(bundle="bundleB"), result(b"r2"))
    assert new.created and new.superseded == (old.item_id,)
    refreshed = store.get(old.item_id)
    assert refreshed.state == SUPERSEDED and refreshed.superseded_by == new.item.item_id
    assert [e.action for e in store.history(old.item_id)] == ["queued", "superseded"]
    assert [i.item_id for i in store.list_items()] == [new.item.item_id]


def test_retriage_keeps_a_claimed_item_with_its_reader(store: WorklistStore) -> None:
    """A claimed item stays CLAIMED by its reader with the new result; the reader completes it."""
    item = store.record(triaged(), result(b"old")).item
    store.claim("dr-a", item.item_id)
    placements = Placements(b"new")
    again = store.record(
        triaged(bundle="bundleB", decision=Decision.AUTO_REPORT, worklist="ai-normal"), placements
    )
    assert again.outcome == ATTACHED and again.item.item_id == item.item_id
    assert again.item.state == CLAIMED and again.item.claimed_by == "dr-a"
    assert again.item.result == b"new" and again.item.worklist == "radiologist"
    assert placements.seen == [Placement(item.item_id, "radiologist", Priority.ROUTINE, CLAIMED)]
    assert again.item.needs_review and "decision DEFER -> AUTO_REPORT" in again.item.review_reason
    assert store.list_items(states=(QUEUED,)) == []
    done = store.complete(item.item_id, "dr-a", ALL_ABSENT)
    assert done.state == COMPLETED


def test_completed_item_is_never_queued_again(store: WorklistStore) -> None:
    """A completed study re-triaged keeps its read; the new result is its latest, flagged."""
    item = store.record(triaged(), result(b"read-against")).item
    store.claim("dr-a", item.item_id)
    store.complete(item.item_id, "dr-a", ALL_ABSENT)
    again = store.record(
        triaged(bundle="bundleB", priority=Priority.STAT, present=("Pneumothorax",)),
        result(b"newer"),
    )
    assert again.outcome == ATTACHED and again.item.item_id == item.item_id
    assert store.list_items(states=(QUEUED, CLAIMED)) == []
    done = store.get(item.item_id)
    assert done.state == COMPLETED and done.final_labels == ALL_ABSENT
    assert done.result == b"read-against" and done.latest_result == b"newer"
    assert done.needs_review and "newly present: Pneumothorax" in done.review_reason
    assert "priority ROUTINE -> STAT" in done.review_reason
    assert [i.item_id for i in store.list_items(states=STATES, needs_review=True)] == [item.item_id]


def test_unchanged_retriage_of_a_completed_item_raises_no_flag(
    store: WorklistStore,
) -> None:
    """A new bundle that agrees with the read result (decision, findings) flags nothing."""
    item = store.record(triaged(), result(b"a")).item
    store.claim("dr-a", item.item_id)
    store.complete(item.item_id, "dr-a", ALL_ABSENT)
    again = store.record(triaged(bundle="bundleB"), result(b"b"))
    assert not again.item.needs_review and again.item.latest_result == b"b"


def test_priority_never_drops_on_retriage(store: WorklistStore) -> None:
    """A re-triage routed ROUTINE gets the STAT the study had, in the item and the placement."""
    store.record(triaged(priority=Priority.STAT, present=("Pneumothorax",)), result(b"stat"))
    placements = Placements(b"routine")
    again = store.record(triaged(bundle="bundleB", priority=Priority.ROUTINE), placements)
    assert again.item.priority == Priority.STAT
    assert placements.seen[0].priority == Priority.STAT
    third = store.record(triaged(bundle="bundleC", priority=Priority.URGENT), result(b"u"))
    assert third.item.priority == Priority.STAT


def test_list_orders_by_priority_then_age(store: WorklistStore, clock: FakeClock) -> None:
    """List puts STAT before ROUTINE, and older before newer within a priority."""
    for i, priority in enumerate(
        [Priority.ROUTINE, Priority.STAT, Priority.ROUTINE, Priority.URGENT]
    ):
        clock.now += 1
        store.record(triaged(f"1.{i}", "b", priority=priority), result(b""))
    order = [item.study_uid for item in store.list_items("radiologist")]
    assert order == ["1.1", "1.3", "1.0", "1.2"]


def test_claim_complete_flow_with_audit(store: WorklistStore) -> None:
    """Claim then complete records the final labels and every state change with its actor."""
    item = store.record(triaged(), result(b"")).item
    claimed = store.claim("dr-a", worklist="radiologist")
    assert claimed.item_id == item.item_id and claimed.state == CLAIMED
    with pytest.raises(Conflict, match="another reader"):
        store.complete(item.item_id, "dr-b", ALL_ABSENT)
    read: dict[str, bool | None] = {**ALL_ABSENT, "Edema": True, "Cardiomegaly": None}
    done = store.complete(item.item_id, "dr-a", read)
    assert done.state == COMPLETED and done.final_labels == read
    history = store.history(item.item_id)
    assert [(e.action, e.actor, e.to_state) for e in history] == [
        ("queued", "system", QUEUED),
        ("claimed", "dr-a", CLAIMED),
        ("completed", "dr-a", COMPLETED),
    ]
    assert json.loads(history[-1].detail)["Cardiomegaly"] is None  # not assessed, stored so


def test_complete_needs_every_label_and_no_unknown_one(store: WorklistStore) -> None:
    """A read naming an unknown label, or leaving one out, is refused naming the labels."""
    item = store.record(triaged(), result(b"")).item
    store.claim("dr-a", item.item_id)
    with pytest.raises(WorklistError, match=r"unknown label\(s\) \['Bogus'\]"):
        store.complete(item.item_id, "dr-a", {**ALL_ABSENT, "Bogus": True})
    with pytest.raises(WorklistError, match=r"no value for label\(s\) \['Pneumothorax'\]"):
        store.complete(item.item_id, "dr-a", {k: False for k in LABELS[:3]})
    with pytest.raises(WorklistError, match="needs the final labels"):
        store.complete(item.item_id, "dr-a", {})
    assert store.get(item.item_id).state == CLAIMED  # nothing was stored


def test_amend_corrects_a_read_audited_and_clears_review(store: WorklistStore) -> None:
    """Amend replaces the final labels of a completed item, records both, and clears its flag."""
    item = store.record(triaged(), result(b"")).item
    store.claim("dr-a", item.item_id)
    store.complete(item.item_id, "dr-a", ALL_ABSENT)
    store.record(triaged(bundle="bundleB", present=("Edema",)), result(b"b"))
    assert store.get(item.item_id).needs_review
    with pytest.raises(WorklistError, match="needs a reason"):
        store.amend(item.item_id, "dr-a", ALL_ABSENT, " ")
    with pytest.raises(WorklistError, match="unknown label"):
        store.amend(item.item_id, "dr-a", {**ALL_ABSENT, "Bogus": False}, "typo")
    fixed = store.amend(item.item_id, "dr-b", {**ALL_ABSENT, "Edema": True}, "missed the edema")
    assert fixed.final_labels["Edema"] is True and not fixed.needs_review
    last = store.history(item.item_id)[-1]
    assert (last.action, last.actor) == ("amended", "dr-b")
    detail = json.loads(last.detail)
    assert detail["previous"]["Edema"] is False and detail["labels"]["Edema"] is True
    assert detail["reason"] == "missed the edema" and "Edema" in detail["review_cleared"]
    queued = store.record(triaged("9.9"), result(b"")).item
    with pytest.raises(Conflict, match="not COMPLETED"):
        store.amend(queued.item_id, "dr-a", ALL_ABSENT, "too early")


def test_audit_entries_carry_the_item_as_it_was(store: WorklistStore) -> None:
    """Each audit entry's item is the state right after it, not the item's current state."""
    item = store.record(triaged(), result(b"r")).item
    store.claim("dr-a", item.item_id)
    store.complete(item.item_id, "dr-a", ALL_ABSENT)
    events = store.history(item.item_id)
    assert [e.item.state if e.item else None for e in events] == [QUEUED, CLAIMED, COMPLETED]
    claimed = events[1].item
    assert claimed is not None and claimed.claimed_by == "dr-a" and claimed.final_labels == {}
    assert claimed.result == b"r" and claimed.labels == LABELS
    assert [e.seq for e in store.events_since(0)] == [e.seq for e in events]


def test_expired_lease_returns_item_to_queue(store: WorklistStore, clock: FakeClock) -> None:
    """A claim whose lease runs out goes back to QUEUED and can be claimed by someone else."""
    item = store.record(triaged(), result(b"")).item
    store.claim("dr-a", item.item_id, lease_s=60)
    clock.now += 61
    assert store.get(item.item_id).state == QUEUED
    assert store.claim("dr-b", item.item_id).claimed_by == "dr-b"
    assert "lease-expired" in [e.action for e in store.history(item.item_id)]


def test_claim_on_empty_worklist_is_not_found(store: WorklistStore) -> None:
    """Claiming from an empty worklist says so instead of returning nothing."""
    with pytest.raises(NotFound, match="no QUEUED item"):
        store.claim("dr-a", worklist="radiologist")
    with pytest.raises(NotFound, match="no worklist item"):
        store.history("no-such-item")


def test_concurrent_claims_never_share_an_item(store_factory: StoreFactory) -> None:
    """Sixteen readers claiming at once from separate connections each get a distinct item."""
    store = store_factory.open()
    for i in range(10):
        store.record(triaged(f"1.{i}", "b"), result(b""))
    got: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def reader(name: str) -> None:
        try:
            item = store.claim(name, worklist="radiologist")
        except NotFound:
            with lock:
                failures.append(name)
            return
        with lock:
            got.append(item.item_id)

    threads = [threading.Thread(target=reader, args=(f"dr-{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 10
    assert len(failures) == 6


def test_everything_survives_a_restart(store_factory: StoreFactory) -> None:
    """Items, claims, audit history and the replay key are all there after a reopen."""
    store = store_factory.open()
    item = store.record(triaged(priority=Priority.STAT), result(b"result-bytes")).item
    store.claim("dr-a", item.item_id)
    last = store.latest_seq()
    store.close()
    reopened = store_factory.open()
    again = reopened.get(item.item_id)
    assert again.state == CLAIMED and again.result == b"result-bytes"
    assert again.priority == Priority.STAT
    assert len(reopened.history(item.item_id)) == 2
    assert reopened.record(triaged(priority=Priority.STAT), result(b"x")).replayed
    reopened.complete(item.item_id, "dr-a", ALL_ABSENT)
    assert [e.action for e in reopened.events_since(last)] == ["completed"]


def test_a_schema_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    """An SQLite database of the first schema opens at the current version with its items intact."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute(
        "INSERT INTO items (item_id, study_uid, bundle_id, worklist, priority, state, result, "
        "created, updated) VALUES ('old', '1.2.3', 'bundleA', 'radiologist', 3, 'QUEUED', "
        "x'0102', 5.0, 5.0)"
    )
    db.execute(
        "INSERT INTO audit (item_id, at, actor, action, from_state, to_state) "
        "VALUES ('old', 5.0, 'system', 'queued', '', 'QUEUED')"
    )
    db.close()
    store = SqliteWorklistStore(path)
    assert store.schema_version == VERSION
    old = store.get("old")
    assert old.result == b"\x01\x02" and old.priority == Priority.STAT and old.labels == ()
    (event,) = store.history("old")
    assert event.item is None and event.to_state == QUEUED  # no snapshot was written then
    # the old row's decision inputs are unknown: a resend re-decides (and keeps STAT)
    again = store.record(triaged(), result(b"new"))
    assert again.outcome == REQUEUED and again.item.priority == Priority.STAT
    store.close()
    reopened = SqliteWorklistStore(path)  # migrating again changes nothing
    assert reopened.schema_version == VERSION and len(reopened.list_items(states=STATES)) == 2


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """An SQLite database written by a newer release is refused rather than guessed at."""
    path = tmp_path / "new.db"
    SqliteWorklistStore(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO schema_migrations (version, applied) VALUES (?, 0)", (VERSION + 1,))
    db.close()
    with pytest.raises(WorklistError, match=f"schema version {VERSION + 1}, newer"):
        SqliteWorklistStore(path)
