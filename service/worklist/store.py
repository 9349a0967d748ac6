"""The durable worklist: a small interface and its SQLite implementation.

SQLite runs in WAL mode with ``synchronous=FULL``: a call returns only after its transaction is
on disk, so a result acknowledged to a client survives a crash (SIGKILL, power loss of the
process). Every write is one transaction; claims take the write lock first (``BEGIN
IMMEDIATE``), so two readers can never claim one item.

Idempotency: one active item per (study, bundle). Recording the same study with the same bundle
again returns the stored result and adds nothing; recording it with another bundle adds a new
item and marks the earlier one superseded (QUEUED or CLAIMED items become SUPERSEDED; a
COMPLETED read stays COMPLETED), with an audit entry either way.

The store is patient-data grade (it holds study UIDs); nothing here logs them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from service.core.enums import Priority
from service.core.errors import Conflict, NotFound, WorklistError

QUEUED, CLAIMED, COMPLETED, SUPERSEDED = "QUEUED", "CLAIMED", "COMPLETED", "SUPERSEDED"
STATES = (QUEUED, CLAIMED, COMPLETED, SUPERSEDED)
SYSTEM = "system"


@dataclass(frozen=True)
class Item:
    """One study on a worklist."""

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
    final_labels: dict[str, bool] = field(default_factory=dict)
    superseded_by: str = ""


@dataclass(frozen=True)
class Event:
    """One audit entry: who changed what, when."""

    seq: int
    item_id: str
    at: float
    actor: str
    action: str
    from_state: str
    to_state: str
    detail: str = ""


@dataclass(frozen=True)
class Recorded:
    """Outcome of :meth:`WorklistStore.record`: the stored item and whether it was new."""

    item: Item
    created: bool
    superseded: tuple[str, ...] = ()


class WorklistStore(Protocol):
    """What the service needs from a worklist database (SQLite here; others may follow)."""

    def record(
        self, study_uid: str, bundle_id: str, worklist: str, priority: Priority, result: bytes
    ) -> Recorded: ...

    def get(self, item_id: str) -> Item: ...

    def list_items(
        self,
        worklist: str = "",
        states: Sequence[str] = (QUEUED, CLAIMED),
        min_priority: Priority = Priority.ROUTINE,
        limit: int = 100,
    ) -> list[Item]: ...

    def claim(
        self, reader: str, item_id: str = "", worklist: str = "", lease_s: float = 900.0
    ) -> Item: ...

    def release(self, item_id: str, reader: str) -> Item: ...

    def complete(self, item_id: str, reader: str, final_labels: dict[str, bool]) -> Item: ...

    def history(self, item_id: str) -> list[Event]: ...

    def events_since(self, seq: int, limit: int = 500) -> list[Event]: ...

    def latest_seq(self) -> int: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    bundle_id TEXT NOT NULL,
    worklist TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    result BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    claimed_by TEXT NOT NULL DEFAULT '',
    lease_expires REAL NOT NULL DEFAULT 0,
    final_labels TEXT NOT NULL DEFAULT '{}',
    superseded_by TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS one_item_per_study_bundle ON items (study_uid, bundle_id);
CREATE INDEX IF NOT EXISTS by_queue ON items (state, worklist, priority DESC, created);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_by_item ON audit (item_id, seq);
"""

_COLUMNS = (
    "item_id, study_uid, bundle_id, worklist, priority, state, result, created, updated, "
    "claimed_by, lease_expires, final_labels, superseded_by"
)


def _item(row: sqlite3.Row) -> Item:
    return Item(
        item_id=row["item_id"],
        study_uid=row["study_uid"],
        bundle_id=row["bundle_id"],
        worklist=row["worklist"],
        priority=Priority(row["priority"]),
        state=row["state"],
        result=bytes(row["result"]),
        created=row["created"],
        updated=row["updated"],
        claimed_by=row["claimed_by"],
        lease_expires=row["lease_expires"],
        final_labels=json.loads(row["final_labels"]),
        superseded_by=row["superseded_by"],
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
        self._db().executescript(_SCHEMA)  # idempotent DDL; executescript manages its own commit

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

    def _audit(
        self, db: sqlite3.Connection, item_id: str, actor: str, action: str, old: str, new: str,
        detail: str = "",
    ) -> None:  # fmt: skip
        db.execute(
            "INSERT INTO audit (item_id, at, actor, action, from_state, to_state, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (item_id, self._now(), actor, action, old, new, detail),
        )

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

    def _get(self, db: sqlite3.Connection, item_id: str) -> Item:
        row = db.execute(f"SELECT {_COLUMNS} FROM items WHERE item_id = ?", (item_id,)).fetchone()
        if row is None:
            raise NotFound(f"no worklist item {item_id!r}")
        return _item(row)

    def record(
        self, study_uid: str, bundle_id: str, worklist: str, priority: Priority, result: bytes
    ) -> Recorded:
        """Store a triage result as a QUEUED item (idempotent per study and bundle)."""
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE study_uid = ? AND bundle_id = ?",
                (study_uid, bundle_id),
            ).fetchone()
            if row is not None:
                return Recorded(_item(row), created=False)
            now = self._now()
            item_id = uuid.uuid4().hex
            earlier = db.execute(
                "SELECT item_id, state FROM items WHERE study_uid = ? AND superseded_by = ''",
                (study_uid,),
            ).fetchall()
            db.execute(
                f"INSERT INTO items ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', 0, '{}', '')",
                (item_id, study_uid, bundle_id, worklist, int(priority), QUEUED, result, now, now),
            )
            self._audit(db, item_id, SYSTEM, "queued", "", QUEUED, f"{worklist} {priority.name}")
            superseded = []
            for old in earlier:
                new_state = old["state"] if old["state"] == COMPLETED else SUPERSEDED
                db.execute(
                    "UPDATE items SET state = ?, superseded_by = ?, updated = ? WHERE item_id = ?",
                    (new_state, item_id, now, old["item_id"]),
                )
                self._audit(db, old["item_id"], SYSTEM, "superseded", old["state"], new_state,
                            f"re-triaged with bundle {bundle_id} as item {item_id}")  # fmt: skip
                superseded.append(old["item_id"])
            return Recorded(self._get(db, item_id), created=True, superseded=tuple(superseded))

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
    ) -> list[Item]:
        """Items by priority (highest first), then age (oldest first)."""
        unknown = set(states) - set(STATES)
        if unknown:
            raise WorklistError(f"unknown item state(s) {sorted(unknown)}")
        marks = ",".join("?" * len(states))
        query = (
            f"SELECT {_COLUMNS} FROM items WHERE state IN ({marks}) AND priority >= ?"
            + (" AND worklist = ?" if worklist else "")
            + " ORDER BY priority DESC, created ASC, item_id LIMIT ?"
        )
        params: list[object] = [*states, int(min_priority)]
        if worklist:
            params.append(worklist)
        params.append(limit)
        with self._transaction() as db:
            self._expire_leases(db)
            return [_item(r) for r in db.execute(query, params).fetchall()]

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
                    f"SELECT {_COLUMNS} FROM items WHERE state = ?"
                    + (" AND worklist = ?" if worklist else "")
                    + " ORDER BY priority DESC, created ASC, item_id LIMIT 1",
                    (QUEUED, worklist) if worklist else (QUEUED,),
                ).fetchone()
                if row is None:
                    raise NotFound(f"no QUEUED item on {worklist or 'any worklist'}")
                item = _item(row)
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

    def _holder_change(self, item_id: str, reader: str, action: str, new_state: str,
                       labels: dict[str, bool] | None = None) -> Item:  # fmt: skip
        with self._transaction() as db:
            self._expire_leases(db)
            item = self._get(db, item_id)
            if item.state != CLAIMED:
                raise Conflict(f"item {item_id} is {item.state}, not CLAIMED")
            if item.claimed_by != reader:
                raise Conflict(f"item {item_id} is claimed by another reader")
            now = self._now()
            db.execute(
                "UPDATE items SET state = ?, claimed_by = ?, lease_expires = 0, updated = ?, "
                "final_labels = ? WHERE item_id = ?",
                (
                    new_state,
                    reader if new_state == COMPLETED else "",
                    now,
                    json.dumps(labels if labels is not None else item.final_labels, sort_keys=True),
                    item_id,
                ),
            )
            detail = json.dumps(labels, sort_keys=True) if labels is not None else ""
            self._audit(db, item_id, reader, action, CLAIMED, new_state, detail)
            return self._get(db, item_id)

    def release(self, item_id: str, reader: str) -> Item:
        """Give a claimed item back to the queue."""
        return self._holder_change(item_id, reader, "released", QUEUED)

    def complete(self, item_id: str, reader: str, final_labels: dict[str, bool]) -> Item:
        """Close a claimed item with the radiologist's final labels."""
        if not final_labels:
            raise WorklistError("completing an item needs the final labels")
        return self._holder_change(item_id, reader, "completed", COMPLETED, final_labels)

    def history(self, item_id: str) -> list[Event]:
        """Every state change of one item, oldest first."""
        rows = (
            self._db()
            .execute("SELECT * FROM audit WHERE item_id = ? ORDER BY seq", (item_id,))
            .fetchall()
        )
        return [Event(**dict(r)) for r in rows]

    def events_since(self, seq: int, limit: int = 500) -> list[Event]:
        """Audit entries after ``seq`` (for Watch streams)."""
        rows = (
            self._db()
            .execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
            .fetchall()
        )
        return [Event(**dict(r)) for r in rows]

    def latest_seq(self) -> int:
        """The newest audit entry's number (0 when there is none): where a new Watch starts."""
        row = self._db().execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
