"""Counterfactual explanation jobs in the worklist store, on both backends (SQLite, PostgreSQL):
queued with the result in one transaction, leased once, done with their Secondary Capture in the
outbox, retried then given up, and never touching the items."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from service.core.enums import Decision, Priority
from service.core.errors import NotFound
from service.worklist.explanations import (
    EXPLAIN_DONE,
    EXPLAIN_FAILED,
    EXPLAIN_PENDING,
    ExplainRequest,
)
from service.worklist.schema import VERSION
from service.worklist.store import (
    REPLAYED,
    STATES,
    NewObject,
    Placement,
    SqliteWorklistStore,
    Triaged,
    WorklistStore,
)
from tests.helpers.worklist_stores import StoreFactory

LABELS = ("Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax")
SIZE = 8
BUNDLE = "bundleA"


class Clock:
    """A settable clock for lease expiry."""

    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


def model_input(seed: int = 0) -> bytes:
    """A (1, SIZE, SIZE) float32 model input as the service stores it."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, SIZE, SIZE)).astype(np.float32).tobytes()


def request(**changes: object) -> ExplainRequest:
    """An explanation request for two findings, no Secondary Capture."""
    base = ExplainRequest(model_input(), SIZE, ("Pneumothorax", "Edema"))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def triaged(study: str = "1.2.3", cost: float = 0.2, **changes: object) -> Triaged:
    """A deferred result with an explanation job."""
    base = Triaged(
        study_uid=study,
        bundle_id=BUNDLE,
        policy_version="",
        defer_cost=cost,
        decision=Decision.DEFER,
        worklist="radiologist",
        priority=Priority.ROUTINE,
        labels=LABELS,
        findings_present=("Pneumothorax",),
        explain=request(),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def stored(placement: Placement) -> bytes:
    """The result bytes (the encoder of the store's record call)."""
    return f"result {placement.item_id}".encode()


@pytest.fixture(name="clock")
def fixture_clock() -> Clock:
    """A clock the test moves by hand."""
    return Clock()


@pytest.fixture(name="store")
def fixture_store(store_factory: StoreFactory, clock: Clock) -> WorklistStore:
    """An empty worklist database of either backend on a hand clock."""
    return store_factory.open(clock=clock)


def test_a_deferred_result_queues_its_job_in_the_same_transaction(store: WorklistStore) -> None:
    """Recording a result with a request leaves one PENDING job holding the model input."""
    recorded = store.record(triaged(), stored)
    pending = store.explanation(recorded.item.item_id)
    assert pending is not None and pending.state == EXPLAIN_PENDING
    assert pending.result_id == recorded.result_id and pending.labels == ("Pneumothorax", "Edema")
    (job,) = store.claim_explanations("w1", [BUNDLE])
    assert job.model_input == model_input() and job.size == SIZE and job.attempts == 1
    assert job.item_id == recorded.item.item_id and job.study_uid == "1.2.3"


def test_a_replay_queues_no_second_job(store: WorklistStore) -> None:
    """A PACS retry (same decision inputs) writes nothing, explanation jobs included."""
    store.record(triaged(), stored)
    again = store.record(triaged(), stored)
    assert again.outcome == REPLAYED
    assert store.explanation_counts() == {EXPLAIN_PENDING: 1}


def test_a_job_is_leased_to_one_worker_until_its_lease_expires(
    store: WorklistStore, clock: Clock
) -> None:
    """A second worker gets nothing while the first holds the lease, and the job once it lapsed."""
    store.record(triaged(), stored)
    assert len(store.claim_explanations("w1", [BUNDLE], lease_s=60)) == 1
    assert store.claim_explanations("w2", [BUNDLE], lease_s=60) == []
    clock.now += 61
    (again,) = store.claim_explanations("w2", [BUNDLE], lease_s=60)
    assert again.attempts == 2


def test_only_jobs_of_the_workers_bundle_are_handed_out(store: WorklistStore) -> None:
    """A worker loaded with another bundle's models never takes a job it cannot explain."""
    store.record(triaged(), stored)
    assert store.claim_explanations("w1", ["other-bundle"]) == []
    assert store.claim_explanations("w1", []) == []
    assert len(store.claim_explanations("w1", [BUNDLE])) == 1


def test_done_stores_the_payload_and_queues_the_secondary_capture(store: WorklistStore) -> None:
    """A finished job is DONE with its message; its SC is in the outbox of the result's study."""
    recorded = store.record(triaged(), stored)
    (job,) = store.claim_explanations("w1", [BUNDLE])
    sc = NewObject("SC", "1.2.840.10008.5.1.4.1.1.7", "2.25.77", "1.2.840.10008.1.2.1", b"dicom",
                   ("pacs",))  # fmt: skip
    assert store.explanation_done(job.explanation_id, "w1", b"message", "ae123", [sc])
    done = store.explanation(recorded.item.item_id)
    assert done is not None and done.state == EXPLAIN_DONE
    assert done.payload == b"message" and done.explainer == "ae123" and done.last_error == ""
    (row,) = store.list_outbox()
    assert row.destination == "pacs" and row.sop_instance_uid == "2.25.77"
    assert row.study_uid == "1.2.3"
    assert [o.kind for o in store.result_objects(recorded.result_id)] == ["SC"]
    assert store.claim_explanations("w1", [BUNDLE]) == []


def test_a_worker_that_lost_its_lease_cannot_store(store: WorklistStore, clock: Clock) -> None:
    """After the lease passed to another worker, the first one's result is refused."""
    recorded = store.record(triaged(), stored)
    (job,) = store.claim_explanations("w1", [BUNDLE], lease_s=10)
    clock.now += 11
    store.claim_explanations("w2", [BUNDLE], lease_s=10)
    assert not store.explanation_done(job.explanation_id, "w1", b"late", "ae")
    assert not store.explanation_failed(job.explanation_id, "w1", "late")
    state = store.explanation(recorded.item.item_id)
    assert state is not None and state.state == EXPLAIN_PENDING and state.payload == b""


def test_failures_retry_then_give_up(store: WorklistStore) -> None:
    """A job failing on every attempt is PENDING again until its last attempt, then FAILED."""
    recorded = store.record(triaged(), stored)
    for attempt in (1, 2, 3):
        (job,) = store.claim_explanations("w1", [BUNDLE], max_attempts=3)
        assert job.attempts == attempt
        assert store.explanation_failed(job.explanation_id, "w1", "ValueError", max_attempts=3)
    failed = store.explanation(recorded.item.item_id)
    assert failed is not None and failed.state == EXPLAIN_FAILED
    assert failed.last_error == "ValueError" and failed.attempts == 3
    assert store.claim_explanations("w1", [BUNDLE]) == []


def test_a_job_whose_worker_keeps_dying_is_given_up(store: WorklistStore, clock: Clock) -> None:
    """Leases that lapse max_attempts times (a worker killed on that input) end in FAILED."""
    recorded = store.record(triaged(), stored)
    for _ in range(2):
        assert len(store.claim_explanations("w", [BUNDLE], lease_s=5, max_attempts=2)) == 1
        clock.now += 6
    assert store.claim_explanations("w", [BUNDLE], lease_s=5, max_attempts=2) == []
    gone = store.explanation(recorded.item.item_id)
    assert gone is not None and gone.state == EXPLAIN_FAILED
    assert "stopped while working on it 2 times" in gone.last_error


def test_jobs_never_change_the_items_or_their_audit(store: WorklistStore) -> None:
    """Claiming, finishing and failing jobs leave every item and audit entry as they were."""
    first = store.record(triaged("1.1"), stored)
    store.record(triaged("2.2"), stored)
    items_before = store.list_items(states=STATES)
    seq = store.latest_seq()
    a, b = store.claim_explanations("w", [BUNDLE], limit=2)
    store.explanation_done(a.explanation_id, "w", b"m", "ae")
    store.explanation_failed(b.explanation_id, "w", "boom")
    assert store.list_items(states=STATES) == items_before
    assert store.latest_seq() == seq
    assert store.get(first.item.item_id) == first.item


def test_an_item_without_a_job_has_no_explanation(store: WorklistStore) -> None:
    """A result recorded without a request (auto-reported, or explain off) has none."""
    recorded = store.record(
        triaged(decision=Decision.AUTO_REPORT, explain=None, findings_present=()), stored
    )
    assert store.explanation(recorded.item.item_id) is None
    with pytest.raises(NotFound):
        store.explanation("no-such-item")


def test_the_current_results_job_is_the_items_explanation(store: WorklistStore) -> None:
    """After a re-triage attached to a claimed item, the item shows its new result's job."""
    first = store.record(triaged(cost=0.2), stored)
    item_id = first.item.item_id
    store.claim("dr-a", item_id, lease_s=600)
    second = store.record(triaged(cost=0.1, explain=request(labels=("Edema",))), stored)
    assert second.item.item_id == item_id
    current = store.explanation(item_id)
    assert current is not None and current.result_id == second.result_id
    assert current.labels == ("Edema",)


def test_the_request_refuses_a_wrong_sized_input() -> None:
    """A model input whose byte count does not match its size is refused when built."""
    with pytest.raises(ValueError, match="4 x 8"):
        ExplainRequest(b"\0" * 10, SIZE, ("Edema",))
    with pytest.raises(ValueError, match="at least one finding"):
        ExplainRequest(model_input(), SIZE, ())


def test_an_older_sqlite_file_gains_the_table(tmp_path: Path) -> None:
    """A database at schema 3 (before explanations) is migrated to the current version."""
    from service.worklist.schema import MIGRATIONS, migrate

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, MIGRATIONS[:3]) == 3
    db.close()
    store = SqliteWorklistStore(path)
    try:
        assert store._db().execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == (
            VERSION
        )
        recorded = store.record(triaged(), stored)
        assert store.explanation(recorded.item.item_id) is not None
    finally:
        store.close()
