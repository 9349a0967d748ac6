"""The worklist database schema as numbered migrations, applied in order at start-up.

Each migration is a list of plain SQL statements (tables, columns, indexes; no triggers, no
engine-specific types beyond what SQLite and PostgreSQL share), run in one transaction together
with the row recording it in ``schema_migrations``, so a crash leaves the database at one
version or the next, never between. Opening a database written by a newer release (a version
this code does not know) is refused rather than guessed at.

Versions:

1. ``items`` (one row per worklist item, its current result) and ``audit`` (every change).
   Databases made before migrations were numbered are at this version: its statements are
   ``IF NOT EXISTS``, so applying it to one of them changes nothing.
2. ``results``: every triage result ever recorded for a study, with its decision inputs (bundle,
   policy version, defer cost), who set the cost and who sent it, the decision, the labels and
   findings present, and its routing; items point at their current result (``result_id``) and,
   when completed, at a newer one (``latest_result_id``); ``review_reason`` flags an item for
   review; every audit entry gets a ``snapshot`` of the item right after the change. Existing
   items get one ``results`` row each, whose decision inputs are unknown (NULL). The unique
   (study, bundle) index gives way to "one active item per study" (a re-triage with another cost
   or policy is a new result of the same bundle).
3. ``dicom_objects`` (the DICOM result objects of a result: kind, UIDs, transfer syntax, bytes)
   and ``outbox`` (one row per object and destination, never two: the unique index; its state
   QUEUED, SENT or FAILED, attempts, when it is due next, the lease of the sender working on it,
   the last error). Both are written in the transaction that records the result.
4. ``explanations``: one counterfactual job per deferred result when ``explain.enabled``
   (:mod:`service.worklist.explanations`): the model input and the findings to explain, the
   source header and destinations of its Secondary Capture, its state PENDING, DONE or FAILED,
   the worker's lease and attempts, the explanation once made (a serialized
   ``triage.v1.Explanation``). Written in the transaction that records the result.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from service.core.errors import WorklistError

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the original schema
        """CREATE TABLE IF NOT EXISTS items (
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
        )""",
        "CREATE UNIQUE INDEX IF NOT EXISTS one_item_per_study_bundle "
        "ON items (study_uid, bundle_id)",
        "CREATE INDEX IF NOT EXISTS by_queue ON items (state, worklist, priority DESC, created)",
        """CREATE TABLE IF NOT EXISTS audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            item_id TEXT NOT NULL,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            from_state TEXT NOT NULL,
            to_state TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX IF NOT EXISTS audit_by_item ON audit (item_id, seq)",
    ),
    (  # 2: results with their decision inputs, review flags, audit snapshots
        """CREATE TABLE results (
            result_id INTEGER PRIMARY KEY AUTOINCREMENT,
            item_id TEXT NOT NULL,
            study_uid TEXT NOT NULL,
            bundle_id TEXT NOT NULL,
            policy_version TEXT,
            defer_cost REAL,
            cost_set_by TEXT NOT NULL DEFAULT '',
            caller TEXT NOT NULL DEFAULT '',
            decision TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '[]',
            findings TEXT NOT NULL DEFAULT '[]',
            worklist TEXT NOT NULL,
            priority INTEGER NOT NULL,
            result BLOB NOT NULL,
            recorded REAL NOT NULL
        )""",
        "CREATE INDEX results_by_study ON results (study_uid, result_id)",
        "ALTER TABLE items ADD COLUMN result_id INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE items ADD COLUMN latest_result_id INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE items ADD COLUMN review_reason TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE audit ADD COLUMN snapshot TEXT NOT NULL DEFAULT ''",
        "INSERT INTO results (item_id, study_uid, bundle_id, worklist, priority, result, recorded) "
        "SELECT item_id, study_uid, bundle_id, worklist, priority, result, created FROM items "
        "ORDER BY created, item_id",
        "UPDATE items SET result_id = "
        "(SELECT r.result_id FROM results r WHERE r.item_id = items.item_id)",
        "DROP INDEX one_item_per_study_bundle",
        "CREATE UNIQUE INDEX one_active_item_per_study ON items (study_uid) "
        "WHERE superseded_by = ''",
        "CREATE INDEX items_by_study ON items (study_uid, created)",
    ),
    (  # 3: DICOM result objects and their outbox
        """CREATE TABLE dicom_objects (
            object_id INTEGER PRIMARY KEY AUTOINCREMENT,
            result_id INTEGER NOT NULL,
            study_uid TEXT NOT NULL,
            kind TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            transfer_syntax_uid TEXT NOT NULL,
            data BLOB NOT NULL,
            created REAL NOT NULL
        )""",
        "CREATE UNIQUE INDEX dicom_objects_by_sop ON dicom_objects (sop_instance_uid)",
        "CREATE INDEX dicom_objects_by_result ON dicom_objects (result_id, object_id)",
        """CREATE TABLE outbox (
            outbox_id INTEGER PRIMARY KEY AUTOINCREMENT,
            object_id INTEGER NOT NULL,
            destination TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_expires REAL NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            sent REAL NOT NULL DEFAULT 0
        )""",
        "CREATE UNIQUE INDEX outbox_once ON outbox (object_id, destination)",
        "CREATE INDEX outbox_due ON outbox (destination, state, next_attempt)",
    ),
    (  # 4: counterfactual explanation jobs of deferred results
        """CREATE TABLE explanations (
            explanation_id INTEGER PRIMARY KEY AUTOINCREMENT,
            result_id INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            study_uid TEXT NOT NULL,
            bundle_id TEXT NOT NULL,
            state TEXT NOT NULL,
            labels TEXT NOT NULL,
            size INTEGER NOT NULL,
            model_input BLOB NOT NULL,
            source_header BLOB NOT NULL,
            destinations TEXT NOT NULL DEFAULT '[]',
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_expires REAL NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            explainer TEXT NOT NULL DEFAULT '',
            payload BLOB NOT NULL DEFAULT X'',
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        "CREATE UNIQUE INDEX explanations_once ON explanations (result_id)",
        "CREATE INDEX explanations_by_item ON explanations (item_id, explanation_id)",
        "CREATE INDEX explanations_pending ON explanations (state, bundle_id, explanation_id)",
    ),
)

#: The schema version this code writes.
VERSION = len(MIGRATIONS)

_LEDGER = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, applied REAL NOT NULL)"
)


def current_version(db: sqlite3.Connection) -> int:
    """The highest migration applied (0 for an empty database)."""
    row = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(row[0])


def migrate(db: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Apply every pending migration, each in its own transaction; returns the version reached.

    ``db`` must be in autocommit mode (``isolation_level=None``). The write lock is taken before
    the version is read, so two processes opening one file at once migrate it once.
    """
    db.execute(_LEDGER)
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = current_version(db)
            if version > len(migrations):
                raise WorklistError(
                    f"the worklist database is at schema version {version}, newer than this "
                    f"release's {len(migrations)}: upgrade the service instead"
                )
            if version == len(migrations):
                db.execute("COMMIT")
                return version
            for statement in migrations[version]:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, applied) VALUES (?, ?)",
                (version + 1, time.time()),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
