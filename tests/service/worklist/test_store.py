"""The SQLite worklist: idempotency, supersession, claims, leases, audit and restarts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from service.core.enums import Priority
from service.core.errors import Conflict, NotFound
from service.worklist.store import CLAIMED, COMPLETED, QUEUED, SUPERSEDED, SqliteWorklistStore


class FakeClock:
    """A settable clock for lease expiry."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def fixture_clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path, clock: FakeClock) -> SqliteWorklistStore:
    """An empty worklist database in a temporary folder."""
    return SqliteWorklistStore(tmp_path / "worklist.db", clock=clock)


def test_store_uses_wal_and_full_sync(store: SqliteWorklistStore) -> None:
    """The database runs in WAL mode with synchronous FULL, so commits are durable."""
    db = store._db()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_same_study_same_bundle_is_idempotent(store: SqliteWorklistStore) -> None:
    """Recording a study twice with one bundle returns the first item and adds nothing."""
    first = store.record("1.2.3", "bundleA", "radiologist", Priority.ROUTINE, b"r1")
    again = store.record("1.2.3", "bundleA", "ai-normal", Priority.STAT, b"r2")
    assert first.created and not again.created
    assert again.item == first.item and again.item.result == b"r1"
    assert len(store.list_items(states=(QUEUED, CLAIMED, COMPLETED, SUPERSEDED))) == 1


def test_new_bundle_supersedes_and_records_it(store: SqliteWorklistStore) -> None:
    """Re-triage with another bundle adds a new item and marks the old one superseded."""
    old = store.record("1.2.3", "bundleA", "radiologist", Priority.ROUTINE, b"r1").item
    new = store.record("1.2.3", "bundleB", "radiologist", Priority.ROUTINE, b"r2")
    assert new.created and new.superseded == (old.item_id,)
    refreshed = store.get(old.item_id)
    assert refreshed.state == SUPERSEDED and refreshed.superseded_by == new.item.item_id
    assert [e.action for e in store.history(old.item_id)] == ["queued", "superseded"]


def test_list_orders_by_priority_then_age(store: SqliteWorklistStore, clock: FakeClock) -> None:
    """List puts STAT before ROUTINE, and older before newer within a priority."""
    for i, priority in enumerate(
        [Priority.ROUTINE, Priority.STAT, Priority.ROUTINE, Priority.URGENT]
    ):
        clock.now += 1
        store.record(f"1.{i}", "b", "radiologist", priority, b"")
    order = [item.study_uid for item in store.list_items("radiologist")]
    assert order == ["1.1", "1.3", "1.0", "1.2"]


def test_claim_complete_flow_with_audit(store: SqliteWorklistStore) -> None:
    """Claim then complete records the final labels and every state change with its actor."""
    item = store.record("1.2.3", "b", "radiologist", Priority.ROUTINE, b"").item
    claimed = store.claim("dr-a", worklist="radiologist")
    assert claimed.item_id == item.item_id and claimed.state == CLAIMED
    with pytest.raises(Conflict, match="another reader"):
        store.complete(item.item_id, "dr-b", {"Edema": True})
    done = store.complete(item.item_id, "dr-a", {"Edema": True, "Pneumothorax": False})
    assert done.state == COMPLETED and done.final_labels == {"Edema": True, "Pneumothorax": False}
    history = store.history(item.item_id)
    assert [(e.action, e.actor, e.to_state) for e in history] == [
        ("queued", "system", QUEUED),
        ("claimed", "dr-a", CLAIMED),
        ("completed", "dr-a", COMPLETED),
    ]


def test_expired_lease_returns_item_to_queue(store: SqliteWorklistStore, clock: FakeClock) -> None:
    """A claim whose lease runs out goes back to QUEUED and can be claimed by someone else."""
    item = store.record("1.2.3", "b", "radiologist", Priority.ROUTINE, b"").item
    store.claim("dr-a", item.item_id, lease_s=60)
    clock.now += 61
    assert store.get(item.item_id).state == QUEUED
    assert store.claim("dr-b", item.item_id).claimed_by == "dr-b"
    assert "lease-expired" in [e.action for e in store.history(item.item_id)]


def test_claim_on_empty_worklist_is_not_found(store: SqliteWorklistStore) -> None:
    """Claiming from an empty worklist says so instead of returning nothing."""
    with pytest.raises(NotFound, match="no QUEUED item"):
        store.claim("dr-a", worklist="radiologist")


def test_concurrent_claims_never_share_an_item(tmp_path: Path) -> None:
    """Sixteen readers claiming at once from separate connections each get a distinct item."""
    store = SqliteWorklistStore(tmp_path / "w.db")
    for i in range(10):
        store.record(f"1.{i}", "b", "radiologist", Priority.ROUTINE, b"")
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


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    """Items, claims and audit history are all there after the store is reopened."""
    path = tmp_path / "w.db"
    store = SqliteWorklistStore(path)
    item = store.record("1.2.3", "b", "radiologist", Priority.STAT, b"result-bytes").item
    store.claim("dr-a", item.item_id)
    store.close()
    reopened = SqliteWorklistStore(path)
    again = reopened.get(item.item_id)
    assert again.state == CLAIMED and again.result == b"result-bytes"
    assert again.priority == Priority.STAT
    assert len(reopened.history(item.item_id)) == 2
    assert not reopened.record("1.2.3", "b", "radiologist", Priority.STAT, b"x").created
