"""The worklist on PostgreSQL: :class:`PostgresWorklistStore`, shared by several replicas.

The same semantics as :class:`~service.worklist.store.SqliteWorklistStore` (replay and
re-triage, placement, reads, audit snapshots, the outbox: see :mod:`service.worklist.store`),
with psycopg 3 and a ``psycopg_pool.ConnectionPool``. Nothing a replica keeps in memory is
needed for correctness; the database decides everything:

- Claims: ``SELECT ... FOR UPDATE SKIP LOCKED`` on the partial index of QUEUED items by
  priority, so concurrent readers on any replica never get one item and never wait on each
  other's rows. Outbox senders lease rows the same way.
- Leases and due times are compared with the database clock (``now()`` of the transaction),
  never a replica's; expiry returns CLAIMED items to QUEUED with an audit entry (rows another
  transaction holds are skipped, and expired the next time).
- Idempotency: the ``studies`` row of the study (primary key) is upserted
  (``INSERT ... ON CONFLICT DO UPDATE``), which locks it: results for one study are recorded one
  at a time, whichever replica receives them, and the same decision inputs replay.
- The audit log is written in the transaction of each change. Audit numbers are taken under a
  transaction-level advisory lock held until commit, so they become visible in increasing order:
  a Watch reading "entries after seq N" can never skip one that commits later with a smaller
  number. Each such commit sends ``NOTIFY``; :meth:`PostgresWorklistStore.wait_for_events`
  wakes on it and the caller re-queries by number, so a notification lost (a dropped listening
  connection) costs latency, never an event.
- Schema migrations are versioned and applied at start-up (:mod:`service.worklist.pg_schema`);
  a newer schema is refused.

The URL may carry a password: no message, log line or exception text of this module contains
it (:func:`redact_url`, :func:`scrubbed`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from service.core.enums import Priority
from service.core.errors import Conflict, NotFound, NotReady, WorklistError
from service.worklist.explanations import (
    EXPLAIN_DONE,
    EXPLAIN_FAILED,
    EXPLAIN_PENDING,
    ExplainRequest,
    ExplanationJob,
    StoredExplanation,
)
from service.worklist.pg_schema import pg_migrate
from service.worklist.rules import (
    ResultFacts,
    checked_read,
    describe_change,
    review_reason,
    same_inputs,
)
from service.worklist.store import (
    _ITEM_COLUMNS,
    _SNAPSHOT_KEYS,
    ATTACHED,
    CLAIMED,
    COMPLETED,
    NEW,
    OUTBOX_FAILED,
    OUTBOX_QUEUED,
    OUTBOX_SENT,
    OUTBOX_STATES,
    QUEUED,
    REPLAYED,
    REQUEUED,
    STATES,
    SUPERSEDED,
    SYSTEM,
    Encoder,
    Event,
    Item,
    NewObject,
    Objects,
    OutboxEntry,
    OutboxStats,
    Placement,
    Recorded,
    StoredObject,
    Triaged,
    _item,
    _job,
    _stored_explanation,
)

#: The channel audit commits notify.
CHANNEL = "triage_worklist_audit"
#: The advisory lock key audit numbering takes (held from the first audit insert to commit).
AUDIT_LOCK = 0x7472_6961_6765_0002

Row = dict[str, Any]

_ITEM_SELECT = (
    f"SELECT {_ITEM_COLUMNS}, r.labels AS labels, l.result AS latest_result FROM items i "
    "LEFT JOIN results r ON r.result_id = i.result_id "
    "LEFT JOIN results l ON l.result_id = i.latest_result_id"
)
_OUTBOX_SELECT = (
    "SELECT o.*, d.kind, d.sop_class_uid, d.sop_instance_uid, d.transfer_syntax_uid, "
    "d.study_uid{data} FROM outbox o JOIN dicom_objects d ON d.object_id = o.object_id"
)


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparseable worklist URL>"


def scrubbed(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if any) removed."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return "<redacted>"
    return text.replace(password, "***") if password else text


def _row_item(row: Row) -> Item:
    latest = row["latest_result"]
    return _item(row, bytes(row["result"]), row["labels"], bytes(latest) if latest else b"")


def _facts(row: Row) -> ResultFacts:
    return ResultFacts(
        bundle_id=row["bundle_id"],
        policy_version=row["policy_version"],
        defer_cost=row["defer_cost"],
        decision=row["decision"],
        findings_present=tuple(json.loads(row["findings"])),
        priority=Priority(row["priority"]),
    )


@dataclass
class _Tx:
    """One transaction: its connection, its time, the audit entries it will write."""

    db: psycopg.Connection[Row]
    now: float
    audits: list[tuple[Any, ...]] = field(default_factory=list)

    def one(self, query: str, params: Sequence[Any] = ()) -> Row | None:
        return self.db.execute(query, params).fetchone()

    def all(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.db.execute(query, params).fetchall()

    def run(self, query: str, params: Sequence[Any] = ()) -> int:
        return self.db.execute(query, params).rowcount


class _Listener:
    """A thread LISTENing on :data:`CHANNEL` that counts wake-ups (notifications, reconnects)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._cond = threading.Condition()
        self.wakeups = 0
        self.backend_pid = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worklist-listen", daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        with self._cond:
            self.wakeups += 1
            self._cond.notify_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    self._wake()  # (re)connected: anything committed meanwhile is re-queried
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self._wake()
            except psycopg.Error:
                self.backend_pid = 0
                self._wake()  # waiters re-query now rather than at their timeout
                self._stop.wait(0.2)

    def wait(self, seen: int, timeout: float) -> None:
        """Until a wake-up after ``seen`` or ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self.wakeups != seen or self._stop.is_set(), timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(5)


class PostgresWorklistStore:
    """:class:`~service.worklist.store.WorklistStore` on a PostgreSQL database.

    ``clock`` replaces the database clock (tests that move time by hand); by default every
    time is the database's ``now()``. ``pool_size`` connections at most are opened.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] | None = None,
        pool_size: int = 16,
        connect_timeout: float = 10.0,
    ) -> None:
        self._url = url
        self.url = redact_url(url)
        self._clock = clock
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        try:
            with psycopg.connect(url, connect_timeout=int(connect_timeout)) as conn:
                self.schema_version = pg_migrate(conn)
        except psycopg.Error as exc:
            raise WorklistError(
                f"cannot open the worklist database {self.url}: {self._scrub(exc)}"
            ) from None
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"row_factory": dict_row},
            open=False,
            name="triage-worklist",
            timeout=30.0,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise WorklistError(f"cannot connect to the worklist database {self.url}") from None

    def _scrub(self, exc: BaseException) -> str:
        return scrubbed(str(exc).strip().splitlines()[0] if str(exc).strip() else "", self._url)

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        try:
            with self._pool.connection() as db, db.transaction():
                tx = _Tx(db, self._time(db))
                yield tx
                self._flush_audit(tx)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise NotReady(f"the worklist database is unavailable: {self._scrub(exc)}") from None

    def _time(self, db: psycopg.Connection[Row]) -> float:
        if self._clock is not None:
            return float(self._clock())
        row = db.execute("SELECT extract(epoch FROM now())::float8 AS now").fetchone()
        assert row is not None
        return float(row["now"])

    # -- reading rows ----------------------------------------------------------------------

    def _get(self, tx: _Tx, item_id: str, lock: bool = False) -> Item:
        row = tx.one(
            f"{_ITEM_SELECT} WHERE i.item_id = %s" + (" FOR UPDATE OF i" if lock else ""),
            (item_id,),
        )
        if row is None:
            raise NotFound(f"no worklist item {item_id!r}")
        return _row_item(row)

    # -- writing ---------------------------------------------------------------------------

    def _audit(
        self, tx: _Tx, item_id: str, actor: str, action: str, old: str, new: str,
        detail: str = "",
    ) -> Item:  # fmt: skip
        """Queue one audit entry with a snapshot of the item as it is now (after the change),
        written at the end of the transaction under the numbering lock; the item now."""
        row = tx.one(f"{_ITEM_SELECT} WHERE i.item_id = %s", (item_id,))
        assert row is not None
        snapshot = {key: row[key] for key in _SNAPSHOT_KEYS}
        snapshot["final_labels"] = json.loads(row["final_labels"])
        tx.audits.append(
            (item_id, tx.now, actor, action, old, new, detail,
             json.dumps(snapshot, sort_keys=True))
        )  # fmt: skip
        return _row_item(row)

    def _flush_audit(self, tx: _Tx) -> None:
        if not tx.audits:
            return
        with tx.db.pipeline(), tx.db.cursor() as cur:  # one round trip for the three
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            cur.executemany(
                "INSERT INTO audit (item_id, at, actor, action, from_state, to_state, detail, "
                "snapshot) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                tx.audits,
            )
            cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))

    def _expire_leases(self, tx: _Tx) -> None:
        rows = tx.all(
            "UPDATE items SET state = %s, claimed_by = '', lease_expires = 0, updated = %s "
            "FROM (SELECT item_id, claimed_by FROM items WHERE state = %s AND lease_expires < %s "
            "ORDER BY item_id FOR UPDATE SKIP LOCKED) AS x WHERE items.item_id = x.item_id "
            "RETURNING items.item_id, x.claimed_by",
            (QUEUED, tx.now, CLAIMED, tx.now),
        )
        for row in rows:
            self._audit(tx, row["item_id"], SYSTEM, "lease-expired", CLAIMED, QUEUED,
                        f"lease of {row['claimed_by']} expired")  # fmt: skip

    def _expire_one(self, tx: _Tx, item: Item) -> Item:
        """``item`` (locked by this transaction), its lease expired if it ran out."""
        if item.state != CLAIMED or item.lease_expires >= tx.now:
            return item
        tx.run(
            "UPDATE items SET state = %s, claimed_by = '', lease_expires = 0, updated = %s "
            "WHERE item_id = %s",
            (QUEUED, tx.now, item.item_id),
        )
        return self._audit(tx, item.item_id, SYSTEM, "lease-expired", CLAIMED, QUEUED,
                           f"lease of {item.claimed_by} expired")  # fmt: skip

    def _insert_result(
        self, tx: _Tx, item_id: str, t: Triaged, blob: bytes, priority: Priority
    ) -> int:
        row = tx.one(
            "INSERT INTO results (item_id, study_uid, bundle_id, policy_version, defer_cost, "
            "cost_set_by, caller, decision, labels, findings, worklist, priority, result, "
            "recorded) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "RETURNING result_id",
            (item_id, t.study_uid, t.bundle_id, t.policy_version, t.defer_cost, t.cost_set_by,
             t.caller, t.decision.name, json.dumps(list(t.labels)),
             json.dumps(sorted(t.findings_present)), t.worklist, int(priority), blob, tx.now),
        )  # fmt: skip
        assert row is not None
        return int(row["result_id"])

    @staticmethod
    def _queued_detail(t: Triaged, priority: Priority) -> str:
        return (
            f"{t.worklist} {priority.name}; {t.decision.name} at cost {t.defer_cost:g} set by "
            f"{t.cost_set_by or 'unknown'}; bundle {t.bundle_id}; policy "
            f"{t.policy_version or 'none'}; sent by {t.caller or 'unknown'}"
        )

    def record(self, triaged: Triaged, encode: Encoder, objects: Objects | None = None) -> Recorded:
        """Store a triage result (or replay the stored one) with its DICOM objects and outbox
        rows; see :mod:`service.worklist.store`."""
        for attempt in range(3):
            try:
                return self._record(triaged, encode, objects)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _record(self, t: Triaged, encode: Encoder, objects: Objects | None) -> Recorded:
        with self._transaction() as tx:
            # the study's key row: created or locked, so one study is recorded at a time
            key = tx.one(
                "INSERT INTO studies (study_uid, first_recorded) VALUES (%s, %s) "
                "ON CONFLICT (study_uid) DO UPDATE SET first_recorded = studies.first_recorded "
                "RETURNING (xmax = 0) AS fresh",
                (t.study_uid, tx.now),
            )
            if key is not None and key["fresh"]:  # a study never seen: nothing to look up
                return self._queue(tx, t, encode, t.priority, None, "", objects)
            latest = tx.one(
                "SELECT * FROM results WHERE study_uid = %s ORDER BY result_id DESC LIMIT 1",
                (t.study_uid,),
            )
            if latest is not None and same_inputs(_facts(latest), t.facts()):
                item = self._get(tx, latest["item_id"])
                result_id = int(latest["result_id"])
                return Recorded(item, REPLAYED, bytes(latest["result"]), result_id=result_id)
            active_row = tx.one(
                f"{_ITEM_SELECT} WHERE i.study_uid = %s AND i.superseded_by = '' FOR UPDATE OF i",
                (t.study_uid,),
            )
            active = None if active_row is None else _row_item(active_row)
            floor_row = tx.one(
                "SELECT MAX(priority) AS floor FROM items WHERE study_uid = %s", (t.study_uid,)
            )
            floor = floor_row["floor"] if floor_row else None
            priority = max(t.priority, Priority(floor)) if floor else t.priority
            change = ""
            if latest is not None:
                change = describe_change(_facts(latest), t.facts())
            if active is None or active.state in (QUEUED, SUPERSEDED):
                return self._queue(tx, t, encode, priority, active, change, objects)
            recorded = self._attach(tx, t, encode, priority, active, change)
            self._with_objects(tx, recorded, t, objects)
            return recorded

    def _with_objects(
        self, tx: _Tx, recorded: Recorded, t: Triaged, objects: Objects | None
    ) -> None:
        """The result's DICOM objects (with their outbox rows) and its explanation job."""
        if objects is not None:
            item = recorded.item
            placement = Placement(item.item_id, item.worklist, item.priority, item.state)
            self._insert_objects(tx, recorded.result_id, t.study_uid, objects(placement))
        if t.explain is not None:
            self._insert_explanation(tx, recorded, t.study_uid, t.bundle_id, t.explain)

    def _queue(
        self, tx: _Tx, t: Triaged, encode: Encoder, priority: Priority,
        earlier: Item | None, change: str, objects: Objects | None,
    ) -> Recorded:  # fmt: skip
        now = tx.now
        item_id = uuid.uuid4().hex
        if earlier is not None:  # give up the active slot first (one active item per study)
            tx.run(
                "UPDATE items SET state = %s, superseded_by = %s, updated = %s WHERE item_id = %s",
                (SUPERSEDED, item_id, now, earlier.item_id),
            )
        blob = encode(Placement(item_id, t.worklist, priority, QUEUED))
        result_id = self._insert_result(tx, item_id, t, blob, priority)
        tx.run(
            "INSERT INTO items (item_id, study_uid, bundle_id, worklist, priority, state, result, "
            "created, updated, result_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (item_id, t.study_uid, t.bundle_id, t.worklist, int(priority), QUEUED, blob, now, now,
             result_id),
        )  # fmt: skip
        detail = self._queued_detail(t, priority)
        if earlier is not None:
            self._audit(tx, earlier.item_id, SYSTEM, "superseded", earlier.state, SUPERSEDED,
                        f"re-triaged as item {item_id}: {change}")  # fmt: skip
            detail += f"; re-triage of item {earlier.item_id}: {change}"
        item = self._audit(tx, item_id, SYSTEM, "queued", "", QUEUED, detail)
        superseded = () if earlier is None else (earlier.item_id,)
        outcome = NEW if earlier is None else REQUEUED
        recorded = Recorded(item, outcome, blob, superseded, result_id)
        self._with_objects(tx, recorded, t, objects)
        return recorded

    def _attach(
        self, tx: _Tx, t: Triaged, encode: Encoder, priority: Priority, item: Item, change: str
    ) -> Recorded:
        priority = max(priority, item.priority)
        blob = encode(Placement(item.item_id, item.worklist, priority, item.state))
        result_id = self._insert_result(tx, item.item_id, t, blob, priority)
        before = tx.one("SELECT * FROM results WHERE result_id = %s", (item.result_id,))
        reason = "" if before is None else review_reason(_facts(before), t.facts(), item.state)
        if before is None:
            reason = f"re-triaged (bundle {t.bundle_id}): the earlier result is unknown"
        review = reason or item.review_reason
        if item.state == CLAIMED:  # the reader keeps the item and sees the new result
            tx.run(
                "UPDATE items SET result = %s, result_id = %s, priority = %s, "
                "review_reason = %s, updated = %s WHERE item_id = %s",
                (blob, result_id, int(priority), review, tx.now, item.item_id),
            )
        else:  # COMPLETED: the read stays with its result; the new one is its latest result
            tx.run(
                "UPDATE items SET latest_result_id = %s, priority = %s, review_reason = %s, "
                "updated = %s WHERE item_id = %s",
                (result_id, int(priority), review, tx.now, item.item_id),
            )
        detail = f"{self._queued_detail(t, priority)}; {change}"
        if reason:
            detail += f"; flagged for review: {reason}"
        after = self._audit(tx, item.item_id, SYSTEM, "re-triaged", item.state, item.state, detail)
        return Recorded(after, ATTACHED, blob, result_id=result_id)

    # -- items -----------------------------------------------------------------------------

    def get(self, item_id: str) -> Item:
        """One item by id."""
        with self._transaction() as tx:
            self._expire_leases(tx)
            return self._get(tx, item_id)

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
        query = (
            f"{_ITEM_SELECT} WHERE i.state = ANY(%s) AND i.priority >= %s"
            + (" AND i.worklist = %s" if worklist else "")
            + (" AND i.review_reason <> ''" if needs_review else "")
            + " ORDER BY i.priority DESC, i.created ASC, i.item_id LIMIT %s"
        )
        params: list[object] = [list(states), int(min_priority)]
        if worklist:
            params.append(worklist)
        params.append(limit)
        with self._transaction() as tx:
            self._expire_leases(tx)
            return [_row_item(r) for r in tx.all(query, params)]

    def claim(
        self, reader: str, item_id: str = "", worklist: str = "", lease_s: float = 900.0
    ) -> Item:
        """Claim one item (or the next QUEUED item of ``worklist``) for ``reader``."""
        if not reader:
            raise WorklistError("a reader name is required to claim an item")
        if lease_s <= 0:
            raise WorklistError(f"lease must be positive, got {lease_s}")
        with self._transaction() as tx:
            self._expire_leases(tx)
            if item_id:
                item = self._expire_one(tx, self._get(tx, item_id, lock=True))
                if item.state != QUEUED:
                    raise Conflict(f"item {item_id} is {item.state}, not QUEUED")
                chosen = item_id
            else:
                row = tx.one(
                    "SELECT item_id FROM items WHERE state = %s"
                    + (" AND worklist = %s" if worklist else "")
                    + " ORDER BY priority DESC, created ASC, item_id LIMIT 1 "
                    "FOR UPDATE SKIP LOCKED",
                    (QUEUED, worklist) if worklist else (QUEUED,),
                )
                if row is None:
                    raise NotFound(f"no QUEUED item on {worklist or 'any worklist'}")
                chosen = row["item_id"]
            claimed = tx.run(
                "UPDATE items SET state = %s, claimed_by = %s, lease_expires = %s, updated = %s "
                "WHERE item_id = %s AND state = %s",
                (CLAIMED, reader, tx.now + lease_s, tx.now, chosen, QUEUED),
            )
            if claimed != 1:  # cannot happen while the row is locked; refuse rather than guess
                raise Conflict(f"item {chosen} is no longer QUEUED")
            return self._audit(
                tx, chosen, reader, "claimed", QUEUED, CLAIMED, f"lease {lease_s:g} s"
            )

    def release(self, item_id: str, reader: str) -> Item:
        """Give a claimed item back to the queue."""
        with self._transaction() as tx:
            self._held(tx, item_id, reader)
            tx.run(
                "UPDATE items SET state = %s, claimed_by = '', lease_expires = 0, updated = %s "
                "WHERE item_id = %s",
                (QUEUED, tx.now, item_id),
            )
            return self._audit(tx, item_id, reader, "released", CLAIMED, QUEUED, "")

    def complete(self, item_id: str, reader: str, final_labels: Mapping[str, bool | None]) -> Item:
        """Close a claimed item with the reader's final labels (one per label of its result)."""
        with self._transaction() as tx:
            item = self._held(tx, item_id, reader)
            read = checked_read(item.labels, final_labels)
            text = json.dumps(read, sort_keys=True)
            tx.run(
                "UPDATE items SET state = %s, lease_expires = 0, updated = %s, "
                "final_labels = %s WHERE item_id = %s",
                (COMPLETED, tx.now, text, item_id),
            )
            return self._audit(tx, item_id, reader, "completed", CLAIMED, COMPLETED, text)

    def amend(
        self, item_id: str, reader: str, final_labels: Mapping[str, bool | None], reason: str
    ) -> Item:
        """Correct the final labels of a COMPLETED item (audited); clears its review flag."""
        if not reader:
            raise WorklistError("a reader name is required to amend a read")
        if not reason.strip():
            raise WorklistError("amending a read needs a reason")
        with self._transaction() as tx:
            item = self._get(tx, item_id, lock=True)
            if item.state != COMPLETED:
                raise Conflict(f"item {item_id} is {item.state}, not COMPLETED: nothing to amend")
            read = checked_read(item.labels, final_labels, "amending")
            tx.run(
                "UPDATE items SET final_labels = %s, review_reason = '', updated = %s "
                "WHERE item_id = %s",
                (json.dumps(read, sort_keys=True), tx.now, item_id),
            )
            detail = {"labels": read, "previous": item.final_labels, "reason": reason}
            if item.review_reason:
                detail["review_cleared"] = item.review_reason
            return self._audit(tx, item_id, reader, "amended", COMPLETED, COMPLETED,
                               json.dumps(detail, sort_keys=True))  # fmt: skip

    def _held(self, tx: _Tx, item_id: str, reader: str) -> Item:
        """The item (locked), after checking that ``reader`` holds its claim."""
        item = self._expire_one(tx, self._get(tx, item_id, lock=True))
        if item.state != CLAIMED:
            raise Conflict(f"item {item_id} is {item.state}, not CLAIMED")
        if item.claimed_by != reader:
            raise Conflict(f"item {item_id} is claimed by another reader")
        return item

    # -- audit -----------------------------------------------------------------------------

    def _events(self, tx: _Tx, rows: Iterable[Row]) -> list[Event]:
        rows = list(rows)
        snapshots = [json.loads(r["snapshot"]) if r["snapshot"] else None for r in rows]
        wanted = {
            int(s[key]) for s in snapshots if s for key in ("result_id", "latest_result_id")
        } - {0}
        results: dict[int, Row] = {}
        if wanted:
            for r in tx.all(
                "SELECT result_id, result, labels FROM results WHERE result_id = ANY(%s)",
                (sorted(wanted),),
            ):
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
                    seq=int(row["seq"]), item_id=row["item_id"], at=row["at"],
                    actor=row["actor"], action=row["action"], from_state=row["from_state"],
                    to_state=row["to_state"], detail=row["detail"], item=item,
                )
            )  # fmt: skip
        return events

    def history(self, item_id: str) -> list[Event]:
        """Every change of one item, oldest first, each with the item as it was then."""
        with self._transaction() as tx:
            rows = tx.all("SELECT * FROM audit WHERE item_id = %s ORDER BY seq", (item_id,))
            events = self._events(tx, rows)
            if not events:
                self._get(tx, item_id)  # NotFound for an unknown item
            return events

    def events_since(self, seq: int, limit: int = 500) -> list[Event]:
        """Audit entries after ``seq``, in order (Watch streams)."""
        with self._transaction() as tx:
            rows = tx.all("SELECT * FROM audit WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit))
            return self._events(tx, rows)

    def latest_seq(self) -> int:
        """The newest audit entry's number (0 when there is none): where a new Watch starts."""
        with self._transaction() as tx:
            row = tx.one("SELECT COALESCE(MAX(seq), 0) AS seq FROM audit")
            return int(row["seq"]) if row else 0

    def wait_for_events(self, after_seq: int, timeout: float) -> bool:
        """Block until an audit entry after ``after_seq`` exists (True) or ``timeout`` seconds
        pass (False). Woken by NOTIFY; it always re-reads the log, so it neither misses an entry
        nor reports one that is not there."""
        deadline = time.monotonic() + timeout
        listener = self._ensure_listener()
        while True:
            seen = listener.wakeups
            if self.latest_seq() > after_seq:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            listener.wait(seen, left)

    def _ensure_listener(self) -> _Listener:
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener(self._url)
            return self._listener

    # -- DICOM objects and the outbox -------------------------------------------------------

    def _insert_objects(
        self, tx: _Tx, result_id: int, study_uid: str, objects: Sequence[NewObject]
    ) -> None:
        for o in objects:
            row = tx.one(
                "INSERT INTO dicom_objects (result_id, study_uid, kind, sop_class_uid, "
                "sop_instance_uid, transfer_syntax_uid, data, created) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING object_id",
                (result_id, study_uid, o.kind, o.sop_class_uid, o.sop_instance_uid,
                 o.transfer_syntax_uid, o.data, tx.now),
            )  # fmt: skip
            assert row is not None
            for destination in dict.fromkeys(o.destinations):
                tx.run(
                    "INSERT INTO outbox (object_id, destination, state, next_attempt, created) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (row["object_id"], destination, OUTBOX_QUEUED, tx.now, tx.now),
                )

    def result_objects(self, result_id: int) -> list[StoredObject]:
        """The DICOM objects stored with one result, in the order they were written."""
        with self._transaction() as tx:
            rows = tx.all(
                "SELECT * FROM dicom_objects WHERE result_id = %s ORDER BY object_id",
                (result_id,),
            )
        return [
            StoredObject(
                object_id=r["object_id"], result_id=r["result_id"], study_uid=r["study_uid"],
                kind=r["kind"], sop_class_uid=r["sop_class_uid"],
                sop_instance_uid=r["sop_instance_uid"],
                transfer_syntax_uid=r["transfer_syntax_uid"], data=bytes(r["data"]),
                created=r["created"],
            )
            for r in rows
        ]  # fmt: skip

    @staticmethod
    def _entry(row: Row, with_data: bool) -> OutboxEntry:
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
        with self._transaction() as tx:
            rows = tx.all(
                _OUTBOX_SELECT.format(data=", d.data")
                + " WHERE o.destination = %s AND o.state = %s AND o.next_attempt <= %s "
                "AND (o.lease_owner = '' OR o.lease_expires < %s) ORDER BY o.outbox_id "
                "LIMIT %s FOR UPDATE OF o SKIP LOCKED",
                (destination, OUTBOX_QUEUED, tx.now, tx.now, limit),
            )
            for row in rows:
                tx.run(
                    "UPDATE outbox SET lease_owner = %s, lease_expires = %s WHERE outbox_id = %s",
                    (owner, tx.now + lease_s, row["outbox_id"]),
                )
            return [self._entry(r, with_data=True) for r in rows]

    def outbox_sent(self, outbox_id: int, owner: str, prune: bool = True) -> bool:
        """Mark a leased row SENT (False: ``owner`` no longer holds it). With ``prune``, the
        object's bytes are dropped once every row of the object is SENT."""
        with self._transaction() as tx:
            row = tx.one(
                "UPDATE outbox SET state = %s, sent = %s, lease_owner = '', lease_expires = 0, "
                "attempts = attempts + 1, last_error = '' "
                "WHERE outbox_id = %s AND lease_owner = %s AND state = %s RETURNING object_id",
                (OUTBOX_SENT, tx.now, outbox_id, owner, OUTBOX_QUEUED),
            )
            if row is None:
                return False
            if prune:
                tx.run(
                    "UPDATE dicom_objects SET data = ''::bytea WHERE object_id = %s AND NOT "
                    "EXISTS (SELECT 1 FROM outbox WHERE object_id = %s AND state <> %s)",
                    (row["object_id"], row["object_id"], OUTBOX_SENT),
                )
            return True

    def outbox_retry(
        self, outbox_id: int, owner: str, error: str, next_attempt: float, give_up: bool = False
    ) -> bool:
        """Count a failed attempt of a leased row: due again at ``next_attempt``, or FAILED
        when ``give_up`` (False: ``owner`` no longer holds it)."""
        with self._transaction() as tx:
            n = tx.run(
                "UPDATE outbox SET state = %s, attempts = attempts + 1, next_attempt = %s, "
                "last_error = %s, lease_owner = '', lease_expires = 0 "
                "WHERE outbox_id = %s AND lease_owner = %s AND state = %s",
                (OUTBOX_FAILED if give_up else OUTBOX_QUEUED, next_attempt, error[:500],
                 outbox_id, owner, OUTBOX_QUEUED),
            )  # fmt: skip
            return n == 1

    def list_outbox(
        self, states: Sequence[str] = OUTBOX_STATES, destination: str = "", limit: int = 100
    ) -> list[OutboxEntry]:
        """Outbox rows (without the object bytes), oldest first."""
        unknown = set(states) - set(OUTBOX_STATES)
        if unknown:
            raise WorklistError(f"unknown outbox state(s) {sorted(unknown)}")
        query = (
            _OUTBOX_SELECT.format(data="")
            + " WHERE o.state = ANY(%s)"
            + (" AND o.destination = %s" if destination else "")
            + " ORDER BY o.outbox_id LIMIT %s"
        )
        params: list[object] = [list(states), *([destination] if destination else []), limit]
        with self._transaction() as tx:
            return [self._entry(r, with_data=False) for r in tx.all(query, params)]

    def outbox_stats(self) -> dict[str, OutboxStats]:
        """Per destination: rows by state and the oldest queued row's creation time."""
        with self._transaction() as tx:
            rows = tx.all(
                "SELECT destination, state, COUNT(*) AS n, MIN(created) AS oldest FROM outbox "
                "GROUP BY destination, state"
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
        self, tx: _Tx, recorded: Recorded, study_uid: str, bundle_id: str, request: ExplainRequest
    ) -> None:
        tx.run(
            "INSERT INTO explanations (result_id, item_id, study_uid, bundle_id, state, labels, "
            "size, model_input, source_header, destinations, created, updated) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (recorded.result_id, recorded.item.item_id, study_uid, bundle_id, EXPLAIN_PENDING,
             json.dumps(list(request.labels)), request.size, request.model_input,
             request.source_header, json.dumps(list(request.destinations)), tx.now, tx.now),
        )  # fmt: skip

    def claim_explanations(
        self,
        owner: str,
        bundle_ids: Sequence[str],
        limit: int = 1,
        lease_s: float = 300.0,
        max_attempts: int = 3,
    ) -> list[ExplanationJob]:
        """Lease up to ``limit`` PENDING jobs of ``bundle_ids`` to ``owner`` (oldest first,
        ``FOR UPDATE SKIP LOCKED``: several workers never take one job); see
        :meth:`service.worklist.store.SqliteWorklistStore.claim_explanations`."""
        if not owner:
            raise WorklistError("an explainer needs an owner name")
        if not bundle_ids:
            return []
        with self._transaction() as tx:
            tx.run(
                "UPDATE explanations SET state = %s, lease_owner = '', payload = ''::bytea, "
                "model_input = ''::bytea, source_header = ''::bytea, updated = %s, last_error = "
                "'the explainer stopped while working on it ' || attempts || ' times' "
                "WHERE state = %s AND attempts >= %s AND lease_owner <> '' AND lease_expires < %s",
                (EXPLAIN_FAILED, tx.now, EXPLAIN_PENDING, max_attempts, tx.now),
            )
            rows = tx.all(
                "SELECT * FROM explanations WHERE state = %s AND bundle_id = ANY(%s) "
                "AND (lease_owner = '' OR lease_expires < %s) ORDER BY explanation_id LIMIT %s "
                "FOR UPDATE SKIP LOCKED",
                (EXPLAIN_PENDING, list(bundle_ids), tx.now, limit),
            )
            for row in rows:
                tx.run(
                    "UPDATE explanations SET lease_owner = %s, lease_expires = %s, "
                    "attempts = attempts + 1, updated = %s WHERE explanation_id = %s",
                    (owner, tx.now + lease_s, tx.now, row["explanation_id"]),
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
        """Store a leased job's explanation (DONE) and queue ``objects`` in the outbox, in one
        transaction; False when ``owner`` no longer holds it."""
        with self._transaction() as tx:
            row = tx.one(
                "UPDATE explanations SET state = %s, payload = %s, explainer = %s, "
                "last_error = '', lease_owner = '', lease_expires = 0, model_input = ''::bytea, "
                "source_header = ''::bytea, updated = %s "
                "WHERE explanation_id = %s AND state = %s AND lease_owner = %s "
                "RETURNING result_id, study_uid",
                (EXPLAIN_DONE, payload, explainer, tx.now, explanation_id, EXPLAIN_PENDING, owner),
            )
            if row is None:
                return False
            self._insert_objects(tx, int(row["result_id"]), row["study_uid"], objects)
            return True

    def explanation_failed(
        self, explanation_id: int, owner: str, error: str, max_attempts: int = 3
    ) -> bool:
        """Record a failed attempt of a leased job: PENDING again, or FAILED once it has had
        ``max_attempts``; False when ``owner`` no longer holds it."""
        with self._transaction() as tx:
            row = tx.one(
                "UPDATE explanations SET last_error = %s, lease_owner = '', lease_expires = 0, "
                "updated = %s, state = CASE WHEN attempts >= %s THEN %s ELSE state END, "
                "model_input = CASE WHEN attempts >= %s THEN ''::bytea ELSE model_input END, "
                "source_header = CASE WHEN attempts >= %s THEN ''::bytea ELSE source_header END "
                "WHERE explanation_id = %s AND state = %s AND lease_owner = %s "
                "RETURNING explanation_id",
                (error[:500], tx.now, max_attempts, EXPLAIN_FAILED, max_attempts, max_attempts,
                 explanation_id, EXPLAIN_PENDING, owner),
            )  # fmt: skip
            return row is not None

    def explanation(self, item_id: str) -> StoredExplanation | None:
        """The explanation of an item's current result, else the newest of any of its results
        (None: the item has none; NotFound: no such item)."""
        with self._transaction() as tx:
            item = self._get(tx, item_id)
            rows = tx.all(
                "SELECT * FROM explanations WHERE item_id = %s ORDER BY explanation_id DESC",
                (item_id,),
            )
        return _stored_explanation(rows, item.result_id)

    def explanation_counts(self) -> dict[str, int]:
        """Explanation jobs by state."""
        with self._transaction() as tx:
            rows = tx.all("SELECT state, COUNT(*) AS n FROM explanations GROUP BY state")
        return {str(r["state"]): int(r["n"]) for r in rows}

    def close(self) -> None:
        """Stop listening and close the pool's connections."""
        with self._listener_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self._pool.close()
