"""Open the worklist store a configuration names: PostgreSQL for a URL, else the SQLite file.

``worklist.url`` = ``postgresql://...`` (or ``postgres://``): :class:`PostgresWorklistStore`,
shared by every replica on that database (psycopg comes with the ``postgres`` extra). Otherwise
``worklist.path``: :class:`SqliteWorklistStore` on that file; both empty: no store (the
worklist is off). The URL may carry a password: messages show it redacted.
"""

from __future__ import annotations

from pathlib import Path

from service.core.errors import WorklistError
from service.worklist.store import SqliteWorklistStore, WorklistStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL."""
    return url.startswith(POSTGRES_SCHEMES)


def open_worklist(url: str = "", path: str = "") -> WorklistStore | None:
    """The store for ``url`` (PostgreSQL) or else ``path`` (SQLite); None when both are empty."""
    if url:
        if not is_postgres_url(url):
            raise WorklistError("worklist.url must start with postgresql:// or postgres://")
        try:
            from service.worklist.postgres import PostgresWorklistStore
        except ImportError:
            raise WorklistError(
                "worklist.url names a PostgreSQL database but psycopg is not installed: "
                "pip install 'cxr-triage[postgres]'"
            ) from None
        return PostgresWorklistStore(url)
    if path:
        return SqliteWorklistStore(Path(path))
    return None


def open_store(config: object) -> WorklistStore | None:
    """The store of a ``WorklistConfig`` (its ``url``, else its ``path``)."""
    return open_worklist(str(getattr(config, "url", "")), str(getattr(config, "path", "")))
