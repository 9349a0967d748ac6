"""The durable worklist: a small interface (:class:`WorklistStore`) and its SQLite implementation.

SQLite runs in WAL mode with ``synchronous=FULL``: a call returns only after its transaction is
on disk, so a result acknowledged to a client survives a crash (SIGKILL, power loss of the
process). Every change is one transaction and writes its audit entry in that same transaction;
writers take the write lock first (``BEGIN IMMEDIATE``), so two readers can never claim one
item and audit numbers are committed in increasing order. The schema is versioned
(:mod:`service.worklist.schema`), migrated at start-up.

Results and idempotency. Every triage result is stored with its decision inputs: the bundle id,
the policy version and the defer cost applied (with who set the cost and who sent the study).
When a result for a study arrives (:meth:`WorklistStore.record`):

- the same decision inputs as the study's latest stored result: REPLAYED, the stored result is
  returned and nothing is written (a PACS retry);
- otherwise the result is recorded (a first triage, or a re-triage with another bundle, policy or
  cost) and placed on the study's active item:

  - none yet: a new QUEUED item (NEW);
  - QUEUED: a new QUEUED item, the old one SUPERSEDED pointing at it (REQUEUED);
  - CLAIMED: the new result replaces the item's result; reader and lease stay (ATTACHED);
  - COMPLETED: never queued again; the new result is kept as the item's ``latest_result``
    beside the result its final labels were read against (ATTACHED).

  An item's priority never drops: a placed result gets at least the highest priority any item of
  the study ever had. A re-triage of a CLAIMED or COMPLETED item flags it for review
  (``review_reason``) when the decision changed, the priority rose or a finding appeared
  (:mod:`service.worklist.rules`); only :meth:`~WorklistStore.amend` clears the flag.

Reads: :meth:`~WorklistStore.complete` and :meth:`~WorklistStore.amend` take a value for every
label of the item's result (``True``, ``False``, or ``None``: not assessed) and refuse unknown
labels. Audit entries carry a snapshot of the item right after the change, which
:meth:`~WorklistStore.history` and :meth:`~WorklistStore.events_since` (Watch) return.

The outbox. A result may come with DICOM objects to send (:class:`NewObject`, each naming its
destinations): they are written in the same transaction as the result (``dicom_objects``, and
one ``outbox`` row per object and destination, which a unique index keeps to one), so there is
no result without its outbox rows and no row twice; a replay writes none. Senders take due rows
with a lease (:meth:`~WorklistStore.claim_outbox`: QUEUED, due, not leased by another sender),
so several replicas can send from one database; :meth:`~WorklistStore.outbox_sent` marks a row
SENT, :meth:`~WorklistStore.outbox_retry` counts a failed attempt and sets when it is due again
(or gives up: FAILED). Nothing of the outbox lives only in a sender's memory: a sender killed
between sending and marking leaves the row leased until the lease expires, and it is sent again
with the same bytes, so the same SOP Instance UID (the one duplicate DICOM allows, the receiver
de-duplicates).

The store is patient-data grade (it holds study UIDs); nothing here logs them.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from service.core.enums import Decision, Priority
from service.core.errors import Conflict, NotFound, WorklistError
from service.worklist.explanations import (
    EXPLAIN_DONE,
    EXPLAIN_FAILED,
    EXPLAIN_PENDING,
    ExplainRequest,
    ExplanationJob,
    StoredExplanation,
)
from service.worklist.rules import (
    ResultFacts,
    checked_read,
    describe_change,
    review_reason,
    same_inputs,
)
from service.worklist.schema import migrate

QUEUED, CLAIMED, COMPLETED, SUPERSEDED = "QUEUED", "CLAIMED", "COMPLETED", "SUPERSEDED"
STATES = (QUEUED, CLAIMED, COMPLETED, SUPERSEDED)
SYSTEM = "system"

#: Outcomes of :meth:`WorklistStore.record`.
NEW, REQUEUED, ATTACHED, REPLAYED = "NEW", "REQUEUED", "ATTACHED", "REPLAYED"

#: A read: label -> present (True), absent (False) or not assessed (None).
Read = dict[str, bool | None]

#: Outbox row states.
OUTBOX_QUEUED, OUTBOX_SENT, OUTBOX_FAILED = "QUEUED", "SENT", "FAILED"
OUTBOX_STATES = (OUTBOX_QUEUED, OUTBOX_SENT, OUTBOX_FAILED)


@dataclass(frozen=True)
class Item:
    """One study on a worklist (or, in an :class:`Event`, as it was right after the event)."""

    item_id: str
    study_uid: str
    bundle_id: str
    worklist: str
    priority: Priority
    state: str
    result: bytes
    created: float
    updated: float
    claimed_by: str = ""
    lease_expires: float = 0.0
    final_labels: Read = field(default_factory=dict)
    superseded_by: str = ""
    labels: tuple[str, ...] = ()  # the labels of ``result`` (empty: unknown, schema 1 rows)
    review_reason: str = ""
    latest_result: bytes = b""  # COMPLETED: a result recorded after completion
    result_id: int = 0
    latest_result_id: int = 0

    @property
    def needs_review(self) -> bool:
        """True while the item is flagged for review."""
        return bool(self.review_reason)


@dataclass(frozen=True)
class Event:
    """One audit entry: who changed what, when, and the item right after it."""

    seq: int
    item_id: str
    at: float
    actor: str
    action: str
    from_state: str
    to_state: str
    detail: str = ""
    item: Item | None = None  # None for entries written before schema 2 (no snapshot)


@dataclass(frozen=True)
class Triaged:
    """A triage result to record: its decision inputs, decision, labels and routing."""

    study_uid: str
    bundle_id: str
    policy_version: str
    defer_cost: float
    decision: Decision
    worklist: str
    priority: Priority
    labels: tuple[str, ...] = ()
    findings_present: tuple[str, ...] = ()
    cost_set_by: str = ""
    caller: str = ""
    explain: ExplainRequest | None = field(default=None, repr=False)  # a counterfactual job

    def facts(self) -> ResultFacts:
        """What the replay and review rules compare."""
        return ResultFacts(
            self.bundle_id,
            self.policy_version,
            self.defer_cost,
            self.decision.name,
            self.findings_present,
            self.priority,
        )


@dataclass(frozen=True)
class Placement:
    """Where a recorded result lands: the item, its worklist, priority and state."""

    item_id: str
    worklist: str
    priority: Priority
    state: str


#: Turns a placement into the result bytes to store (and return): the front door sets the item
#: id and the placed priority on its wire message, so a replay returns exactly those bytes.
Encoder = Callable[[Placement], bytes]


@dataclass(frozen=True)
class NewObject:
    """A DICOM object to store with a result and send to ``destinations``."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes = field(repr=False)
    destinations: tuple[str, ...] = ()


#: The objects to record with a result, for its placement (called inside the transaction, only
#: when the result is recorded: never for a replay).
Objects = Callable[[Placement], Sequence[NewObject]]


@dataclass(frozen=True)
class StoredObject:
    """A DICOM object stored with a result (``data`` empty once sent and pruned)."""

    object_id: int
    result_id: int
    study_uid: str
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes = field(repr=False)
    created: float = 0.0


@dataclass(frozen=True)
class OutboxEntry:
    """One outbox row with its object (``data`` only from :meth:`WorklistStore.claim_outbox`)."""

    outbox_id: int
    object_id: int
    destination: str
    state: str
    attempts: int
    next_attempt: float
    last_error: str
    created: float
    sent: float
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_uid: str
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class OutboxStats:
    """Rows of one destination by state, and the creation time of its oldest queued row."""

    queued: int = 0
    sent: int = 0
    failed: int = 0
    oldest_queued: float | None = None


@dataclass(frozen=True)
class Recorded:
    """Outcome of :meth:`WorklistStore.record`: the item, what happened, the result returned."""

    item: Item
    outcome: str  # NEW, REQUEUED, ATTACHED or REPLAYED
    result: bytes  # the new result as stored, or the stored result replayed
    superseded: tuple[str, ...] = ()
    result_id: int = 0  # the results row stored or replayed

    @property
    def replayed(self) -> bool:
        """True when the stored result was returned and nothing was written."""
        return self.outcome == REPLAYED

    @property
    def created(self) -> bool:
        """True when a new item was queued."""
        return self.outcome in (NEW, REQUEUED)


class WorklistStore(Protocol):
    """What the service needs from a worklist database (SQLite here; PostgreSQL in
    :mod:`service.worklist.postgres`)."""

    schema_version: int

    def record(
        self, triaged: Triaged, encode: Encoder, objects: Objects | None = None
    ) -> Recorded: ...

    def get(self, item_id: str) -> Item: ...

    def list_items(
        self,
        worklist: str = "",
        states: Sequence[str] = (QUEUED, CLAIMED),
        min_priority: Priority = Priority.ROUTINE,
        limit: int = 100,
        needs_review: bool = False,
    ) -> list[Item]: ...

    def claim(
        self, reader: str, item_id: str = "", worklist: str = "", lease_s: float = 900.0
    ) -> Item: ...

    def release(self, item_id: str, reader: str) -> Item: ...

    def complete(
        self, item_id: str, reader: str, final_labels: Mapping[str, bool | None]
    ) -> Item: ...

    def amend(
        self, item_id: str, reader: str, final_labels: Mapping[str, bool | None], reason: str
    ) -> Item: ...

    def history(self, item_id: str) -> list[Event]: ...

    def events_since(self, seq: int, limit: int = 500) -> list[Event]: ...

    def latest_seq(self) -> int: ...

    def wait_for_events(self, after_seq: int, timeout: float) -> bool: ...

    def result_objects(self, result_id: int) -> list[StoredObject]: ...

    def claim_outbox(
        self, destination: str, owner: str, limit: int = 16, lease_s: float = 60.0
    ) -> list[OutboxEntry]: ...

    def outbox_sent(self, outbox_id: int, owner: str, prune: bool = True) -> bool: ...

    def outbox_retry(
        self, outbox_id: int, owner: str, error: str, next_attempt: float, give_up: bool = False
    ) -> bool: ...

    def list_outbox(
        self, states: Sequence[str] = OUTBOX_STATES, destination: str = "", limit: int = 100
    ) -> list[OutboxEntry]: ...

    def outbox_stats(self) -> dict[str, OutboxStats]: ...

    def claim_explanations(
        self,
        owner: str,
        bundle_ids: Sequence[str],
        limit: int = 1,
        lease_s: float = 300.0,
        max_attempts: int = 3,
    ) -> list[ExplanationJob]: ...

    def explanation_done(
        self,
        explanation_id: int,
        owner: str,
        payload: bytes,
        explainer: str,
        objects: Sequence[NewObject] = (),
    ) -> bool: ...

    def explanation_failed(
        self, explanation_id: int, owner: str, error: str, max_attempts: int = 3
    ) -> bool: ...

    def explanation(self, item_id: str) -> StoredExplanation | None: ...

    def explanation_counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


_ITEM_COLUMNS = (
    "i.item_id, i.study_uid, i.bundle_id, i.worklist, i.priority, i.state, i.result, i.created, "
    "i.updated, i.claimed_by, i.lease_expires, i.final_labels, i.superseded_by, i.result_id, "
    "i.latest_result_id, i.review_reason"
)
_ITEM_SELECT = (
    f"SELECT {_ITEM_COLUMNS}, r.labels AS labels, l.result AS latest_result FROM items i "
    "LEFT JOIN results r ON r.result_id = i.result_id "
    "LEFT JOIN results l ON l.result_id = i.latest_result_id"
)
_SNAPSHOT_KEYS = (
    "item_id", "study_uid", "bundle_id", "worklist", "priority", "state", "created", "updated",
    "claimed_by", "lease_expires", "final_labels", "superseded_by", "result_id",
    "latest_result_id", "review_reason",
)  # fmt: skip


def _item(
    row: Mapping[str, Any] | sqlite3.Row, result: bytes, labels: str | None, latest: bytes
) -> Item:
    final = row["final_labels"]
    return Item(
        item_id=row["item_id"],
        study_uid=row["study_uid"],
        bundle_id=row["bundle_id"],
        worklist=row["worklist"],
        priority=Priority(row["priority"]),
        state=row["state"],
        result=result,
        created=row["created"],
        updated=row["updated"],
        claimed_by=row["claimed_by"],
        lease_expires=row["lease_expires"],
        final_labels=json.loads(final) if isinstance(final, str) else dict(final),
        superseded_by=row["superseded_by"],
        labels=tuple(json.loads(labels or "[]")),
        review_reason=row["review_reason"],
        latest_result=latest,
        result_id=int(row["result_id"]),
        latest_result_id=int(row["latest_result_id"]),
    )


def _job(row: Any) -> ExplanationJob:
    """An explanations row (either backend) as the job a worker leased."""
    return ExplanationJob(
        explanation_id=int(row["explanation_id"]),
        result_id=int(row["result_id"]),
        item_id=row["item_id"],
        study_uid=row["study_uid"],
        bundle_id=row["bundle_id"],
        labels=tuple(json.loads(row["labels"])),
        size=int(row["size"]),
        attempts=int(row["attempts"]) + 1,
        model_input=bytes(row["model_input"]),
        source_header=bytes(row["source_header"]),
        destinations=tuple(json.loads(row["destinations"])),
    )


def _stored_explanation(rows: Sequence[Any], result_id: int) -> StoredExplanation | None:
    """Of an item's explanations rows (newest first): the current result's, else the newest."""
    if not rows:
        return None
    row = next((r for r in rows if int(r["result_id"]) == result_id), rows[0])
    return StoredExplanation(
        explanation_id=int(row["explanation_id"]),
        result_id=int(row["result_id"]),
        item_id=row["item_id"],
        study_uid=row["study_uid"],
        bundle_id=row["bundle_id"],
        state=row["state"],
        labels=tuple(json.loads(row["labels"])),
        attempts=int(row["attempts"]),
        last_error=row["last_error"],
        explainer=row["explainer"],
        created=float(row["created"]),
        updated=float(row["updated"]),
        payload=bytes(row["payload"]),
    )


def _row_item(row: sqlite3.Row) -> Item:
    latest = row["latest_result"]
    return _item(row, bytes(row["result"]), row["labels"], bytes(latest) if latest else b"")


def _facts(row: sqlite3.Row) -> ResultFacts:
    return ResultFacts(
        bundle_id=row["bundle_id"],
        policy_version=row["policy_version"],
        defer_cost=row["defer_cost"],
        decision=row["decision"],
        findings_present=tuple(json.loads(row["findings"])),
        priority=Priority(row["priority"]),
    )


class SqliteWorklistStore:
    """:class:`WorklistStore` on one SQLite file (WAL, synchronous FULL)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.schema_version = migrate(self._db())

    def _now(self) -> float:
        return float(self._clock())

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- reading rows ----------------------------------------------------------------------

    def _get(self, db: sqlite3.Connection, item_id: str) -> Item:
        row = db.execute(f"{_ITEM_SELECT} WHERE i.item_id = ?", (item_id,)).fetchone()
        if row is None:
            raise NotFound(f"no worklist item {item_id!r}")
        return _row_item(row)

    def _result_row(self, db: sqlite3.Connection, result_id: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM results WHERE result_id = ?", (result_id,)
        ).fetchone()
        return row

    # -- writing ---------------------------------------------------------------------------

    def _audit(
        self, db: sqlite3.Connection, item_id: str, actor: str, action: str, old: str, new: str,
        detail: str = "",
    ) -> None:  # fmt: skip
        """One audit entry with a snapshot of the item as it is now (after the change)."""
        row = db.execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
        snapshot = {key: row[key] for key in _SNAPSHOT_KEYS}
        snapshot["final_labels"] = json.loads(row["final_labels"])
        db.execute(
            "INSERT INTO audit (item_id, at, actor, action, from_state, to_state, detail, "
            "snapshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (item_id, self._now(), actor, action, old, new, detail,
             json.dumps(snapshot, sort_keys=True)),
        )  # fmt: skip

    def _expire_leases(self, db: sqlite3.Connection) -> None:
        now = self._now()
        rows = db.execute(
            "SELECT item_id, claimed_by FROM items WHERE state = ? AND lease_expires < ?",
            (CLAIMED, now),
        ).fetchall()
        for row in rows:
            db.execute(
                "UPDATE items SET state = ?, claimed_by = '', lease_expires = 0, updated = ? "
                "WHERE item_id = ?",
                (QUEUED, now, row["item_id"]),
            )
            self._audit(db, row["item_id"], SYSTEM, "lease-expired", CLAIMED, QUEUED,
                        f"lease of {row['claimed_by']} expired")  # fmt: skip

    def _insert_result(
        self, db: sqlite3.Connection, item_id: str, t: Triaged, blob: bytes, priority: Priority
    ) -> int:
        cursor = db.execute(
            "INSERT INTO results (item_id, study_uid, bundle_id, policy_version, defer_cost, "
            "cost_set_by, caller, decision, labels, findings, worklist, priority, result, "
            "recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (item_id, t.study_uid, t.bundle_id, t.policy_version, t.defer_cost, t.cost_set_by,
             t.caller, t.decision.name, json.dumps(list(t.labels)),
             json.dumps(sorted(t.findings_present)), t.worklist, int(priority), blob,
             self._now()),
        )  # fmt: skip
        return int(cursor.lastrowid or 0)

    @staticmethod
    def _queued_detail(t: Triaged, priority: Priority) -> str:
        return (
            f"{t.worklist} {priority.name}; {t.decision.name} at cost {t.defer_cost:g} set by "
            f"{t.cost_set_by or 'unknown'}; bundle {t.bundle_id}; policy "
            f"{t.policy_version or 'none'}; sent by {t.caller or 'unknown'}"
        )

    def record(self, triaged: Triaged, encode: Encoder, objects: Objects | None = None) -> Recorded:
        """Store a triage result (or replay the stored one) with its DICOM objects and outbox
        rows; see the module docstring."""
        t = triaged
        with self._transaction() as db:
            latest = db.execute(
                "SELECT * FROM results WHERE study_uid = ? ORDER BY result_id DESC LIMIT 1",
                (t.study_uid,),
            ).fetchone()
            if latest is not None and same_inputs(_facts(latest), t.facts()):
                item = self._get(db, latest["item_id"])
                result_id = int(latest["result_id"])
                return Recorded(item, REPLAYED, bytes(latest["result"]), result_id=result_id)
            active_row = db.execute(
                "SELECT item_id FROM items WHERE study_uid = ? AND superseded_by = ''",
                (t.study_uid,),
            ).fetchone()
            active = None if active_row is None else self._get(db, active_row["item_id"])
            floor = db.execute(
                "SELECT MAX(priority) FROM items WHERE study_uid = ?", (t.study_uid,)
            ).fetchone()[0]
            priority = max(t.priority, Priority(floor)) if floor else t.priority
            change = ""
            if latest is not None:
                change = describe_change(_facts(latest), t.facts())
            if active is None or active.state in (QUEUED, SUPERSEDED):
                recorded = self._queue(db, t, encode, priority, active, change)
            else:
                recorded = self._attach(db, t, encode, priority, active, change)
            if objects is not None:
                item = recorded.item
                placement = Placement(item.item_id, item.worklist, item.priority, item.state)
                self._insert_objects(db, recorded.result_id, t.study_uid, objects(placement))
            if t.explain is not None:
                self._insert_explanation(db, recorded, t.study_uid, t.bundle_id, t.explain)
            return recorded

    def _queue(
        self, db: sqlite3.Connection, t: Triaged, encode: Encoder, priority: Priority,
        earlier: Item | None, change: str,
    ) -> Recorded:  # fmt: skip
        now = self._now()
        item_id = uuid.uuid4().hex
        if earlier is not None:  # give up the active slot first (one active item per study)
            db.execute(
                "UPDATE items SET state = ?, superseded_by = ?, updated = ? WHERE item_id = ?",
                (SUPERSEDED, item_id, now, earlier.item_id),
            )
        blob = encode(Placement(item_id, t.worklist, priority, QUEUED))
        db.execute(
            "INSERT INTO items (item_id, study_uid, bundle_id, worklist, priority, state, result, "
            "created, updated, result_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (item_id, t.study_uid, t.bundle_id, t.worklist, int(priority), QUEUED, blob, now, now),
        )
        result_id = self._insert_result(db, item_id, t, blob, priority)
        db.execute("UPDATE items SET result_id = ? WHERE item_id = ?", (result_id, item_id))
        detail = self._queued_detail(t, priority)
        if earlier is not None:
            self._audit(db, earlier.item_id, SYSTEM, "superseded", earlier.state, SUPERSEDED,
                        f"re-triaged as item {item_id}: {change}")  # fmt: skip
            detail += f"; re-triage of item {earlier.item_id}: {change}"
        self._audit(db, item_id, SYSTEM, "queued", "", QUEUED, detail)
        superseded = () if earlier is None else (earlier.item_id,)
        outcome = NEW if earlier is None else REQUEUED
        return Recorded(self._get(db, item_id), outcome, blob, superseded, result_id)

    def _attach(
        self, db: sqlite3.Connection, t: Triaged, encode: Encoder, priority: Priority,
        item: Item, change: str,
    ) -> Recorded:  # fmt: skip
        now = self._now()
        priority = max(priority, item.priority)
        blob = encode(Placement(item.item_id, item.worklist, priority, item.state))
        result_id = self._insert_result(db, item.item_id, t, blob, priority)
        before = self._result_row(db, item.result_id)
        reason = "" if before is None else review_reason(_facts(before), t.facts(), item.state)
        if before is None:
            reason = f"re-triaged (bundle {t.bundle_id}): the earlier result is unknown"
        review = reason or item.review_reason
        if item.state == CLAIMED:  # the reader keeps the item and sees the new result
            db.execute(
                "UPDATE items SET result = ?, result_id = ?, priority = ?, review_reason = ?, "
                "updated = ? WHERE item_id = ?",
                (blob, result_id, int(priority), review, now, item.item_id),
            )
        else:  # COMPLETED: the read stays with its result; the new one is its latest result
            db.execute(
                "UPDATE items SET latest_result_id = ?, priority = ?, review_reason = ?, "
                "updated = ? WHERE item_id = ?",
                (result_id, int(priority), review, now, item.item_id),
            )
        detail = f"{self._queued_detail(t, priority)}; {change}"
        if reason:
            detail += f"; flagged for review: {reason}"
        self._audit(db, item.item_id, SYSTEM, "re-triaged", item.state, item.state, detail)
        return Recorded(self._get(db, item.item_id), ATTACHED, blob, result_id=result_id)

    # -- items -----------------------------------------------------------------------------

    def get(self, item_id: str) -> Item:
        """One item by id."""
        with self._transaction() as db:
            self._expire_leases(db)
            return self._get(db, item_id)

    def list_items(
        self,
        worklist: str = "",
        states: Sequence[str] = (QUEUED, CLAIMED),
        min_priority: Priority = Priority.ROUTINE,
        limit: int = 100,
        needs_review: bool = False,
    ) -> list[Item]:
        """Items by priority (highest first), then age (oldest first)."""
        unknown = set(states) - set(STATES)
        if unknown:
            raise WorklistError(f"unknown item state(s) {sorted(unknown)}")
        marks = ",".join("?" * len(states))
        query = (
            f"{_ITEM_SELECT} WHERE i.state IN ({marks}) AND i.priority >= ?"
            + (" AND i.worklist = ?" if worklist else "")
            + (" AND i.review_reason <> ''" if needs_review else "")
            + " ORDER BY i.priority DESC, i.created ASC, i.item_id LIMIT ?"
        )
        params: list[object] = [*states, int(min_priority)]
        if worklist:
            params.append(worklist)
        params.append(limit)
        with self._transaction() as db:
            self._expire_leases(db)
            return [_row_item(r) for r in db.execute(query, params).fetchall()]

    def claim(
        self, reader: str, item_id: str = "", worklist: str = "", lease_s: float = 900.0
    ) -> Item:
        """Claim one item (or the next QUEUED item of ``worklist``) for ``reader``."""
        if not reader:
            raise WorklistError("a reader name is required to claim an item")
        if lease_s <= 0:
            raise WorklistError(f"lease must be positive, got {lease_s}")
        with self._transaction() as db:
            self._expire_leases(db)
            if item_id:
                item = self._get(db, item_id)
                if item.state != QUEUED:
                    raise Conflict(f"item {item_id} is {item.state}, not QUEUED")
            else:
                row = db.execute(
                    "SELECT item_id FROM items WHERE state = ?"
                    + (" AND worklist = ?" if worklist else "")
                    + " ORDER BY priority DESC, created ASC, item_id LIMIT 1",
                    (QUEUED, worklist) if worklist else (QUEUED,),
                ).fetchone()
                if row is None:
                    raise NotFound(f"no QUEUED item on {worklist or 'any worklist'}")
                item = self._get(db, row["item_id"])
            now = self._now()
            db.execute(
                "UPDATE items SET state = ?, claimed_by = ?, lease_expires = ?, updated = ? "
                "WHERE item_id = ? AND state = ?",
                (CLAIMED, reader, now + lease_s, now, item.item_id, QUEUED),
            )
            self._audit(
                db, item.item_id, reader, "claimed", QUEUED, CLAIMED, f"lease {lease_s:g} s"
            )
            return self._get(db, item.item_id)

    def release(self, item_id: str, reader: str) -> Item:
        """Give a claimed item back to the queue."""
        with self._transaction() as db:
            item = self._held(db, item_id, reader)
            db.execute(
                "UPDATE items SET state = ?, claimed_by = '', lease_expires = 0, updated = ? "
                "WHERE item_id = ?",
                (QUEUED, self._now(), item_id),
            )
            self._audit(db, item_id, reader, "released", CLAIMED, QUEUED, "")
            return self._get(db, item.item_id)

    def complete(self, item_id: str, reader: str, final_labels: Mapping[str, bool | None]) -> Item:
        """Close a claimed item with the reader's final labels (one per label of its result)."""
        with self._transaction() as db:
            item = self._held(db, item_id, reader)
            read = checked_read(item.labels, final_labels)
            text = json.dumps(read, sort_keys=True)
            db.execute(
                "UPDATE items SET state = ?, lease_expires = 0, updated = ?, final_labels = ? "
                "WHERE item_id = ?",
                (COMPLETED, self._now(), text, item_id),
            )
            self._audit(db, item_id, reader, "completed", CLAIMED, COMPLETED, text)
            return self._get(db, item_id)

    def amend(
        self, item_id: str, reader: str, final_labels: Mapping[str, bool | None], reason: str
    ) -> Item:
        """Correct the final labels of a COMPLETED item (audited); clears its review flag."""
        if not reader:
            raise WorklistError("a reader name is required to amend a read")
        if not reason.strip():
            raise WorklistError("amending a read needs a reason")
        with self._transaction() as db:
            item = self._get(db, item_id)
            if item.state != COMPLETED:
                raise Conflict(f"item {item_id} is {item.state}, not COMPLETED: nothing to amend")
            read = checked_read(item.labels, final_labels, "amending")
            db.execute(
                "UPDATE items SET final_labels = ?, review_reason = '', updated = ? "
                "WHERE item_id = ?",
                (json.dumps(read, sort_keys=True), self._now(), item_id),
            )
            detail = {"labels": read, "previous": item.final_labels, "reason": reason}
            if item.review_reason:
                detail["review_cleared"] = item.review_reason
            self._audit(db, item_id, reader, "amended", COMPLETED, COMPLETED,
                        json.dumps(detail, sort_keys=True))  # fmt: skip
            return self._get(db, item_id)

    def _held(self, db: sqlite3.Connection, item_id: str, reader: str) -> Item:
        """The item, after checking that ``reader`` holds its claim."""
        self._expire_leases(db)
        item = self._get(db, item_id)
        if item.state != CLAIMED:
            raise Conflict(f"item {item_id} is {item.state}, not CLAIMED")
        if item.claimed_by != reader:
            raise Conflict(f"item {item_id} is claimed by another reader")
        return item

    # -- audit -----------------------------------------------------------------------------

    def _events(self, db: sqlite3.Connection, rows: Iterable[sqlite3.Row]) -> list[Event]:
        rows = list(rows)
        snapshots = [json.loads(r["snapshot"]) if r["snapshot"] else None for r in rows]
        wanted = {
            int(s[key]) for s in snapshots if s for key in ("result_id", "latest_result_id")
        } - {0}
        results: dict[int, sqlite3.Row] = {}
        ids = sorted(wanted)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for r in db.execute(
                f"SELECT result_id, result, labels FROM results WHERE result_id IN ({marks})",
                chunk,
            ).fetchall():
                results[int(r["result_id"])] = r
        events = []
        for row, snap in zip(rows, snapshots, strict=True):
            item = None
            if snap is not None:
                current = results.get(int(snap["result_id"]))
                latest = results.get(int(snap["latest_result_id"]))
                item = _item(
                    snap,
                    bytes(current["result"]) if current is not None else b"",
                    current["labels"] if current is not None else None,
                    bytes(latest["result"]) if latest is not None else b"",
                )
            events.append(
                Event(
                    seq=row["seq"],
                    item_id=row["item_id"],
                    at=row["at"],
                    actor=row["actor"],
                    action=row["action"],
                    from_state=row["from_state"],
                    to_state=row["to_state"],
                    detail=row["detail"],
                    item=item,
                )
            )
        return events

    def history(self, item_id: str) -> list[Event]:
        """Every change of one item, oldest first, each with the item as it was then."""
        db = self._db()
        rows = db.execute("SELECT * FROM audit WHERE item_id = ? ORDER BY seq", (item_id,))
        events = self._events(db, rows.fetchall())
        if not events:
            self._get(db, item_id)  # NotFound for an unknown item
        return events

    def events_since(self, seq: int, limit: int = 500) -> list[Event]:
        """Audit entries after ``seq``, in order (Watch streams)."""
        db = self._db()
        rows = db.execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return self._events(db, rows.fetchall())

    def latest_seq(self) -> int:
        """The newest audit entry's number (0 when there is none): where a new Watch starts."""
        row = self._db().execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()
        return int(row[0])

    def wait_for_events(self, after_seq: int, timeout: float) -> bool:
        """Wait ``timeout`` seconds (Watch's poll interval); True if entries after ``after_seq``
        exist then. (PostgreSQL's store wakes early on NOTIFY.)"""
        time.sleep(timeout)
        return self.latest_seq() > after_seq

    # -- DICOM objects and the outbox -------------------------------------------------------

    def _insert_objects(
        self, db: sqlite3.Connection, result_id: int, study_uid: str, objects: Sequence[NewObject]
    ) -> None:
        now = self._now()
        for o in objects:
            cursor = db.execute(
                "INSERT INTO dicom_objects (result_id, study_uid, kind, sop_class_uid, "
                "sop_instance_uid, transfer_syntax_uid, data, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (result_id, study_uid, o.kind, o.sop_class_uid, o.sop_instance_uid,
                 o.transfer_syntax_uid, o.data, now),
            )  # fmt: skip
            object_id = int(cursor.lastrowid or 0)
            for destination in dict.fromkeys(o.destinations):
                db.execute(
                    "INSERT INTO outbox (object_id, destination, state, next_attempt, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (object_id, destination, OUTBOX_QUEUED, now, now),
                )

    def result_objects(self, result_id: int) -> list[StoredObject]:
        """The DICOM objects stored with one result, in the order they were written."""
        rows = self._db().execute(
            "SELECT * FROM dicom_objects WHERE result_id = ? ORDER BY object_id", (result_id,)
        )
        return [
            StoredObject(
                object_id=r["object_id"], result_id=r["result_id"], study_uid=r["study_uid"],
                kind=r["kind"], sop_class_uid=r["sop_class_uid"],
                sop_instance_uid=r["sop_instance_uid"],
                transfer_syntax_uid=r["transfer_syntax_uid"], data=bytes(r["data"]),
                created=r["created"],
            )
            for r in rows.fetchall()
        ]  # fmt: skip

    _OUTBOX_SELECT = (
        "SELECT o.*, d.kind, d.sop_class_uid, d.sop_instance_uid, d.transfer_syntax_uid, "
        "d.study_uid{data} FROM outbox o JOIN dicom_objects d ON d.object_id = o.object_id"
    )

    @staticmethod
    def _entry(row: sqlite3.Row, with_data: bool) -> OutboxEntry:
        return OutboxEntry(
            outbox_id=row["outbox_id"], object_id=row["object_id"],
            destination=row["destination"], state=row["state"], attempts=row["attempts"],
            next_attempt=row["next_attempt"], last_error=row["last_error"],
            created=row["created"], sent=row["sent"], kind=row["kind"],
            sop_class_uid=row["sop_class_uid"], sop_instance_uid=row["sop_instance_uid"],
            transfer_syntax_uid=row["transfer_syntax_uid"], study_uid=row["study_uid"],
            data=bytes(row["data"]) if with_data else b"",
        )  # fmt: skip

    def claim_outbox(
        self, destination: str, owner: str, limit: int = 16, lease_s: float = 60.0
    ) -> list[OutboxEntry]:
        """Lease up to ``limit`` due QUEUED rows of ``destination`` to ``owner`` (oldest first)."""
        if not owner:
            raise WorklistError("an outbox sender needs an owner name")
        with self._transaction() as db:
            now = self._now()
            rows = db.execute(
                self._OUTBOX_SELECT.format(data=", d.data")
                + " WHERE o.destination = ? AND o.state = ? AND o.next_attempt <= ? "
                "AND (o.lease_owner = '' OR o.lease_expires < ?) ORDER BY o.outbox_id LIMIT ?",
                (destination, OUTBOX_QUEUED, now, now, limit),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE outbox SET lease_owner = ?, lease_expires = ? WHERE outbox_id = ?",
                    (owner, now + lease_s, row["outbox_id"]),
                )
            return [self._entry(r, with_data=True) for r in rows]

    def outbox_sent(self, outbox_id: int, owner: str, prune: bool = True) -> bool:
        """Mark a leased row SENT (False: ``owner`` no longer holds it). With ``prune``, the
        object's bytes are dropped once every row of the object is SENT."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT object_id FROM outbox WHERE outbox_id = ? AND lease_owner = ? "
                "AND state = ?",
                (outbox_id, owner, OUTBOX_QUEUED),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "UPDATE outbox SET state = ?, sent = ?, lease_owner = '', lease_expires = 0, "
                "attempts = attempts + 1, last_error = '' WHERE outbox_id = ?",
                (OUTBOX_SENT, self._now(), outbox_id),
            )
            if prune:
                db.execute(
                    "UPDATE dicom_objects SET data = X'' WHERE object_id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM outbox WHERE object_id = ? AND state <> ?)",
                    (row["object_id"], row["object_id"], OUTBOX_SENT),
                )
            return True

    def outbox_retry(
        self, outbox_id: int, owner: str, error: str, next_attempt: float, give_up: bool = False
    ) -> bool:
        """Count a failed attempt of a leased row: due again at ``next_attempt``, or FAILED
        when ``give_up`` (False: ``owner`` no longer holds it)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, next_attempt = ?, "
                "last_error = ?, lease_owner = '', lease_expires = 0 "
                "WHERE outbox_id = ? AND lease_owner = ? AND state = ?",
                (OUTBOX_FAILED if give_up else OUTBOX_QUEUED, next_attempt, error[:500],
                 outbox_id, owner, OUTBOX_QUEUED),
            )  # fmt: skip
            return cursor.rowcount == 1

    def list_outbox(
        self, states: Sequence[str] = OUTBOX_STATES, destination: str = "", limit: int = 100
    ) -> list[OutboxEntry]:
        """Outbox rows (without the object bytes), oldest first."""
        unknown = set(states) - set(OUTBOX_STATES)
        if unknown:
            raise WorklistError(f"unknown outbox state(s) {sorted(unknown)}")
        marks = ",".join("?" * len(states))
        query = (
            self._OUTBOX_SELECT.format(data="")
            + f" WHERE o.state IN ({marks})"
            + (" AND o.destination = ?" if destination else "")
            + " ORDER BY o.outbox_id LIMIT ?"
        )
        params: list[object] = [*states, *([destination] if destination else []), limit]
        rows = self._db().execute(query, params).fetchall()
        return [self._entry(r, with_data=False) for r in rows]

    def outbox_stats(self) -> dict[str, OutboxStats]:
        """Per destination: rows by state and the oldest queued row's creation time."""
        rows = (
            self._db()
            .execute(
                "SELECT destination, state, COUNT(*) AS n, MIN(created) AS oldest FROM outbox "
                "GROUP BY destination, state"
            )
            .fetchall()
        )
        out: dict[str, OutboxStats] = {}
        for r in rows:
            stats = out.get(r["destination"], OutboxStats())
            n = int(r["n"])
            if r["state"] == OUTBOX_QUEUED:
                stats = dataclasses.replace(stats, queued=n, oldest_queued=float(r["oldest"]))
            elif r["state"] == OUTBOX_SENT:
                stats = dataclasses.replace(stats, sent=n)
            else:
                stats = dataclasses.replace(stats, failed=n)
            out[r["destination"]] = stats
        return out

    # -- counterfactual explanation jobs (service.worklist.explanations) ---------------------

    def _insert_explanation(
        self,
        db: sqlite3.Connection,
        recorded: Recorded,
        study_uid: str,
        bundle_id: str,
        request: ExplainRequest,
    ) -> None:
        now = self._now()
        db.execute(
            "INSERT INTO explanations (result_id, item_id, study_uid, bundle_id, state, labels, "
            "size, model_input, source_header, destinations, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (recorded.result_id, recorded.item.item_id, study_uid, bundle_id, EXPLAIN_PENDING,
             json.dumps(list(request.labels)), request.size, request.model_input,
             request.source_header, json.dumps(list(request.destinations)), now, now),
        )  # fmt: skip

    def claim_explanations(
        self,
        owner: str,
        bundle_ids: Sequence[str],
        limit: int = 1,
        lease_s: float = 300.0,
        max_attempts: int = 3,
    ) -> list[ExplanationJob]:
        """Lease up to ``limit`` PENDING jobs of ``bundle_ids`` (oldest first) to ``owner``.

        A job whose lease expired after its last allowed attempt (the worker died on it) is
        given up (FAILED) instead of being handed out again."""
        if not owner:
            raise WorklistError("an explainer needs an owner name")
        if not bundle_ids:
            return []
        marks = ", ".join("?" for _ in bundle_ids)
        with self._transaction() as db:
            now = self._now()
            db.execute(
                "UPDATE explanations SET state = ?, lease_owner = '', payload = X'', "
                "model_input = X'', source_header = X'', updated = ?, last_error = "
                "'the explainer stopped while working on it ' || attempts || ' times' "
                "WHERE state = ? AND attempts >= ? AND lease_owner != '' AND lease_expires < ?",
                (EXPLAIN_FAILED, now, EXPLAIN_PENDING, max_attempts, now),
            )
            rows = db.execute(
                "SELECT * FROM explanations WHERE state = ? AND bundle_id IN (" + marks + ") "
                "AND (lease_owner = '' OR lease_expires < ?) ORDER BY explanation_id LIMIT ?",
                (EXPLAIN_PENDING, *bundle_ids, now, limit),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE explanations SET lease_owner = ?, lease_expires = ?, "
                    "attempts = attempts + 1, updated = ? WHERE explanation_id = ?",
                    (owner, now + lease_s, now, row["explanation_id"]),
                )
            return [_job(r) for r in rows]

    def explanation_done(
        self,
        explanation_id: int,
        owner: str,
        payload: bytes,
        explainer: str,
        objects: Sequence[NewObject] = (),
    ) -> bool:
        """Store a leased job's explanation (DONE) and queue ``objects`` (its Secondary
        Capture) in the outbox, in one transaction; False when ``owner`` no longer holds it."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM explanations WHERE explanation_id = ? AND state = ? "
                "AND lease_owner = ?",
                (explanation_id, EXPLAIN_PENDING, owner),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "UPDATE explanations SET state = ?, payload = ?, explainer = ?, last_error = '', "
                "lease_owner = '', lease_expires = 0, model_input = X'', source_header = X'', "
                "updated = ? WHERE explanation_id = ?",
                (EXPLAIN_DONE, payload, explainer, self._now(), explanation_id),
            )
            self._insert_objects(db, row["result_id"], row["study_uid"], objects)
            return True

    def explanation_failed(
        self, explanation_id: int, owner: str, error: str, max_attempts: int = 3
    ) -> bool:
        """Record a failed attempt of a leased job: PENDING again, or FAILED once it has had
        ``max_attempts``; False when ``owner`` no longer holds it."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE explanations SET last_error = ?, lease_owner = '', lease_expires = 0, "
                "updated = ?, state = CASE WHEN attempts >= ? THEN ? ELSE state END, "
                "model_input = CASE WHEN attempts >= ? THEN X'' ELSE model_input END, "
                "source_header = CASE WHEN attempts >= ? THEN X'' ELSE source_header END "
                "WHERE explanation_id = ? AND state = ? AND lease_owner = ?",
                (error[:500], self._now(), max_attempts, EXPLAIN_FAILED, max_attempts,
                 max_attempts, explanation_id, EXPLAIN_PENDING, owner),
            )  # fmt: skip
            return cursor.rowcount == 1

    def explanation(self, item_id: str) -> StoredExplanation | None:
        """The explanation of an item's current result, else the newest of any of its results
        (None: the item has none; NotFound: no such item)."""
        db = self._db()
        item = self._get(db, item_id)
        rows = db.execute(
            "SELECT * FROM explanations WHERE item_id = ? ORDER BY explanation_id DESC",
            (item_id,),
        ).fetchall()
        return _stored_explanation(rows, item.result_id)

    def explanation_counts(self) -> dict[str, int]:
        """Explanation jobs by state."""
        rows = (
            self._db()
            .execute("SELECT state, COUNT(*) AS n FROM explanations GROUP BY state")
            .fetchall()
        )
        return {str(r["state"]): int(r["n"]) for r in rows}

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
