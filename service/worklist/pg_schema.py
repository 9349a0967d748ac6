"""The PostgreSQL worklist schema: numbered migrations applied at start-up, one lock for all.

The versions mirror SQLite's (:mod:`service.worklist.schema`, the same numbers and meaning) in
PostgreSQL's types: ``BYTEA`` for results and DICOM objects, ``DOUBLE PRECISION`` for times
(Unix seconds, so the two backends return the same values), identity columns for row ids and
audit numbers. What PostgreSQL adds:

- ``studies``: one row per study (primary key ``study_uid``), the idempotency key. Recording a
  result upserts it (``INSERT ... ON CONFLICT (study_uid) DO UPDATE``), which creates or locks
  the study's row in one statement: two replicas recording the same study at the same instant
  are serialised on it, and the second sees the first's result and replays it. The unique
  partial index ``one_active_item_per_study`` still makes a second active item impossible.
- ``items_queued`` / ``items_queued_by_worklist``: partial indexes on the QUEUED items by
  priority and age, which ``SELECT ... FOR UPDATE SKIP LOCKED`` claims walk;
  ``items_leased``: the CLAIMED items by lease expiry, which expiry walks.

Every migration runs in one transaction with its ``schema_migrations`` row, under a
transaction-level advisory lock, so replicas starting together migrate once; a database at a
version this code does not know is refused.
"""

from __future__ import annotations

from typing import Any

from service.core.errors import WorklistError

#: The advisory lock key migrations take (an arbitrary constant of this application).
MIGRATION_LOCK = 0x7472_6961_6765_0001

PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: items and their audit log
        """CREATE TABLE items (
            item_id TEXT PRIMARY KEY,
            study_uid TEXT NOT NULL,
            bundle_id TEXT NOT NULL,
            worklist TEXT NOT NULL,
            priority INTEGER NOT NULL,
            state TEXT NOT NULL,
            result BYTEA NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL,
            claimed_by TEXT NOT NULL DEFAULT '',
            lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0,
            final_labels TEXT NOT NULL DEFAULT '{}',
            superseded_by TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE audit (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            item_id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            from_state TEXT NOT NULL,
            to_state TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX audit_by_item ON audit (item_id, seq)",
    ),
    (  # 2: results with their decision inputs, the study key, review flags, snapshots
        """CREATE TABLE results (
            result_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            item_id TEXT NOT NULL,
            study_uid TEXT NOT NULL,
            bundle_id TEXT NOT NULL,
            policy_version TEXT,
            defer_cost DOUBLE PRECISION,
            cost_set_by TEXT NOT NULL DEFAULT '',
            caller TEXT NOT NULL DEFAULT '',
            decision TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '[]',
            findings TEXT NOT NULL DEFAULT '[]',
            worklist TEXT NOT NULL,
            priority INTEGER NOT NULL,
            result BYTEA NOT NULL,
            recorded DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX results_by_study ON results (study_uid, result_id)",
        """CREATE TABLE studies (
            study_uid TEXT PRIMARY KEY,
            first_recorded DOUBLE PRECISION NOT NULL
        )""",
        "ALTER TABLE items ADD COLUMN result_id BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE items ADD COLUMN latest_result_id BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE items ADD COLUMN review_reason TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE audit ADD COLUMN snapshot TEXT NOT NULL DEFAULT ''",
        "CREATE UNIQUE INDEX one_active_item_per_study ON items (study_uid) "
        "WHERE superseded_by = ''",
        "CREATE INDEX items_by_study ON items (study_uid, created)",
        "CREATE INDEX items_queued ON items (priority DESC, created, item_id) "
        "WHERE state = 'QUEUED'",
        "CREATE INDEX items_queued_by_worklist ON items (worklist, priority DESC, created, "
        "item_id) WHERE state = 'QUEUED'",
        "CREATE INDEX items_leased ON items (lease_expires) WHERE state = 'CLAIMED'",
    ),
    (  # 3: DICOM result objects and their outbox
        """CREATE TABLE dicom_objects (
            object_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            result_id BIGINT NOT NULL,
            study_uid TEXT NOT NULL,
            kind TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            transfer_syntax_uid TEXT NOT NULL,
            data BYTEA NOT NULL,
            created DOUBLE PRECISION NOT NULL
        )""",
        "CREATE UNIQUE INDEX dicom_objects_by_sop ON dicom_objects (sop_instance_uid)",
        "CREATE INDEX dicom_objects_by_result ON dicom_objects (result_id, object_id)",
        """CREATE TABLE outbox (
            outbox_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            object_id BIGINT NOT NULL,
            destination TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt DOUBLE PRECISION NOT NULL,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            created DOUBLE PRECISION NOT NULL,
            sent DOUBLE PRECISION NOT NULL DEFAULT 0
        )""",
        "CREATE UNIQUE INDEX outbox_once ON outbox (object_id, destination)",
        "CREATE INDEX outbox_due ON outbox (destination, state, next_attempt)",
    ),
    (  # 4: counterfactual explanation jobs of deferred results
        """CREATE TABLE explanations (
            explanation_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            result_id BIGINT NOT NULL,
            item_id TEXT NOT NULL,
            study_uid TEXT NOT NULL,
            bundle_id TEXT NOT NULL,
            state TEXT NOT NULL,
            labels TEXT NOT NULL,
            size INTEGER NOT NULL,
            model_input BYTEA NOT NULL,
            source_header BYTEA NOT NULL,
            destinations TEXT NOT NULL DEFAULT '[]',
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            explainer TEXT NOT NULL DEFAULT '',
            payload BYTEA NOT NULL DEFAULT '',
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        )""",
        "CREATE UNIQUE INDEX explanations_once ON explanations (result_id)",
        "CREATE INDEX explanations_by_item ON explanations (item_id, explanation_id)",
        "CREATE INDEX explanations_pending ON explanations (bundle_id, explanation_id) "
        "WHERE state = 'PENDING'",
    ),
)

#: The schema version this code writes (the same number as SQLite's).
PG_VERSION = len(PG_MIGRATIONS)

_LEDGER = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"
)


def pg_migrate(conn: Any, migrations: tuple[tuple[str, ...], ...] = PG_MIGRATIONS) -> int:
    """Apply every pending migration on ``conn`` (a psycopg connection); the version reached."""
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(_LEDGER)
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            version = int(row.fetchone()[0])
            if version > len(migrations):
                raise WorklistError(
                    f"the worklist database is at schema version {version}, newer than this "
                    f"release's {len(migrations)}: upgrade the service instead"
                )
            if version == len(migrations):
                return version
            for statement in migrations[version]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied) "
                "VALUES (%s, extract(epoch FROM now())::float8)",
                (version + 1,),
            )
