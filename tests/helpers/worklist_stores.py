"""Open worklist stores of either backend on one database, for tests parametrised over both.

A :class:`StoreFactory` names one database (an SQLite file, or a fresh PostgreSQL database) and
opens stores on it (:meth:`StoreFactory.open`, again for a restart or a second replica); every
store it opened is closed at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from service.worklist.store import SqliteWorklistStore, WorklistStore

BACKENDS = ("sqlite", "postgres")


class StoreFactory:
    """Stores of ``kind`` on one database: ``path`` (SQLite) or ``url`` (PostgreSQL)."""

    def __init__(self, kind: str, path: Path | None = None, url: str = "") -> None:
        self.kind = kind
        self.path = path
        self.url = url
        self._opened: list[WorklistStore] = []

    def open(self, clock: Callable[[], float] | None = None) -> WorklistStore:
        """A store on this factory's database (``clock``: a hand-moved clock, else the real
        one: the system clock for SQLite, the database's for PostgreSQL)."""
        store: WorklistStore
        if self.kind == "postgres":
            from service.worklist.postgres import PostgresWorklistStore

            store = PostgresWorklistStore(self.url, clock=clock)
        else:
            assert self.path is not None
            store = (
                SqliteWorklistStore(self.path)
                if clock is None
                else SqliteWorklistStore(self.path, clock=clock)
            )
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        """Close every store opened here."""
        for store in self._opened:
            store.close()
        self._opened.clear()
