"""What only the PostgreSQL worklist has to show: several replicas (stores) on one database
claim, record and watch concurrently without sharing an item, duplicating a study or skipping an
audit entry; leases run on the database clock; schema refusal; Watch on NOTIFY across a dropped
connection; the URL's password in no message."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service.core.enums import Decision, Priority
from service.core.errors import NotFound, WorklistError
from service.worklist.pg_schema import PG_VERSION
from service.worklist.postgres import PostgresWorklistStore, redact_url
from service.worklist.schema import VERSION
from service.worklist.store import CLAIMED, NEW, QUEUED, REPLAYED, STATES, Triaged
from tests.helpers.postgres import PASSWORD, PostgresServer

LABELS = ("Edema", "Pneumothorax")


def _triaged(study: str, cost: float = 0.2) -> Triaged:
    return Triaged(
        study_uid=study,
        bundle_id="b1",
        policy_version="p1",
        defer_cost=cost,
        decision=Decision.DEFER,
        worklist="radiologist",
        priority=Priority.ROUTINE,
        labels=LABELS,
    )


class Waiter:
    """A thread blocked in ``wait_for_events(after, 30 s)``; how long it waited."""

    def __init__(self, store: PostgresWorklistStore, after: int) -> None:
        self.woke: list[bool] = []
        self.waited = -1.0
        self._thread = threading.Thread(target=self._wait, args=(store, after))
        self._thread.start()
        time.sleep(0.3)  # blocked on the listener by now
        assert self._thread.is_alive()
        self._t0 = time.monotonic()

    def _wait(self, store: PostgresWorklistStore, after: int) -> None:
        self.woke.append(store.wait_for_events(after, 30.0))
        self._t1 = time.monotonic()

    def result(self, timeout: float) -> bool | None:
        """What the wait returned (None: still waiting after ``timeout``)."""
        self._thread.join(timeout)
        if not self.woke:
            return None
        self.waited = self._t1 - self._t0
        return self.woke[0]


@pytest.fixture(name="replicas")
def fixture_replicas(postgres_url: str) -> Iterator[list[PostgresWorklistStore]]:
    """Three stores on one fresh database, as three replicas would open it."""
    stores = [PostgresWorklistStore(postgres_url, pool_size=8) for _ in range(3)]
    yield stores
    for store in stores:
        store.close()


def test_same_schema_version_as_sqlite(replicas: list[PostgresWorklistStore]) -> None:
    """Both backends are at the same schema version, applied once though three replicas
    opened the database."""
    assert PG_VERSION == VERSION
    assert {s.schema_version for s in replicas} == {VERSION}
    with psycopg.connect(replicas[0]._url) as db:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == list(range(1, VERSION + 1))


def test_concurrent_claims_from_replicas_never_share_an_item(
    replicas: list[PostgresWorklistStore],
) -> None:
    """24 readers on three replicas claim until the queue is empty: each of the 60 items goes
    to exactly one reader, and each has exactly one claim in its audit history."""
    ids = [replicas[0].record(_triaged(f"1.{i}"), lambda p: b"r").item.item_id for i in range(60)]
    got: list[tuple[str, str]] = []
    lock = threading.Lock()

    def reader(store: PostgresWorklistStore, name: str) -> None:
        while True:
            try:
                item = store.claim(name, worklist="radiologist", lease_s=300)
            except NotFound:
                return
            with lock:
                got.append((item.item_id, name))

    threads = [
        threading.Thread(target=reader, args=(replicas[i % 3], f"dr-{i}")) for i in range(24)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = Counter(item_id for item_id, _ in got)
    assert sorted(claimed) == sorted(ids) and set(claimed.values()) == {1}
    for item_id, name in got:
        actions = [e.action for e in replicas[1].history(item_id)]
        assert actions == ["queued", "claimed"]
        assert replicas[2].get(item_id).claimed_by == name


def test_one_study_sent_to_three_replicas_at_once_is_stored_once(
    replicas: list[PostgresWorklistStore],
) -> None:
    """The same study with the same decision inputs recorded concurrently through three
    replicas, many times: one NEW, the rest REPLAYED the same bytes, one item."""
    outcomes: list[str] = []
    results: set[bytes] = set()
    lock = threading.Lock()
    start = threading.Barrier(12)

    def send(store: PostgresWorklistStore, n: int) -> None:
        start.wait()
        recorded = store.record(_triaged("9.9.9"), lambda p: f"r{n}".encode())
        with lock:
            outcomes.append(recorded.outcome)
            results.add(recorded.result)

    threads = [threading.Thread(target=send, args=(replicas[n % 3], n)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert Counter(outcomes) == {NEW: 1, REPLAYED: 11}
    assert len(results) == 1
    assert len(replicas[0].list_items(states=STATES)) == 1


def test_watchers_never_miss_an_audit_entry_under_concurrent_writers(
    replicas: list[PostgresWorklistStore],
) -> None:
    """Writers on three replicas record and claim while a watcher reads "entries after the
    last one seen" in a loop: it ends with every entry, in order, each once."""
    seen: list[int] = []
    stop = threading.Event()

    def watcher() -> None:
        cursor = 0
        while True:
            done = stop.is_set()
            for event in replicas[2].events_since(cursor, limit=50):
                seen.append(event.seq)
                cursor = event.seq
            if done:
                return

    def writer(store: PostgresWorklistStore, w: int) -> None:
        for i in range(15):
            store.record(_triaged(f"2.{w}.{i}"), lambda p: b"r")
            with contextlib.suppress(NotFound):
                store.claim(f"dr-{w}", worklist="radiologist")

    watch = threading.Thread(target=watcher)
    watch.start()
    writers = [threading.Thread(target=writer, args=(replicas[w % 3], w)) for w in range(6)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    watch.join(60)
    with psycopg.connect(replicas[0]._url) as db:
        every = [r[0] for r in db.execute("SELECT seq FROM audit ORDER BY seq")]
    assert len(every) >= 6 * 15 * 2
    assert seen == every


def test_expired_lease_returns_to_queued_by_the_database_clock(
    replicas: list[PostgresWorklistStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease runs on the database's clock: a replica whose own clock is an hour ahead does
    not expire it early; after the lease's second passes on the database, another replica
    sees the item QUEUED again, with the expiry audited, and another reader claims it."""
    item = replicas[0].record(_triaged("3.1"), lambda p: b"r").item
    claimed = replicas[0].claim("dr-a", item.item_id, lease_s=1.0)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600.0)  # a replica's wrong clock
    assert replicas[1].get(item.item_id).state == CLAIMED
    monkeypatch.undo()
    with psycopg.connect(replicas[0]._url) as db:
        db_now = db.execute("SELECT extract(epoch FROM now())::float8").fetchone()
    assert db_now is not None
    assert claimed.lease_expires == pytest.approx(claimed.updated + 1.0)
    assert abs(claimed.updated - db_now[0]) < 5.0  # stamped by the database's now()
    time.sleep(1.3)
    assert replicas[1].get(item.item_id).state == QUEUED
    history = replicas[2].history(item.item_id)
    assert [e.action for e in history] == ["queued", "claimed", "lease-expired"]
    assert history[-1].actor == "system" and "dr-a" in history[-1].detail
    assert replicas[2].claim("dr-b", worklist="radiologist").item_id == item.item_id


def test_a_newer_schema_is_refused_naming_both_versions(postgres_url: str) -> None:
    """A database written by a newer release is refused with a message naming both versions."""
    PostgresWorklistStore(postgres_url).close()
    with psycopg.connect(postgres_url) as db:
        db.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (VERSION + 1,))
    with pytest.raises(WorklistError, match=f"schema version {VERSION + 1}, newer than this "):
        PostgresWorklistStore(postgres_url)


def test_watch_wakes_on_notify_and_misses_nothing_across_a_dropped_connection(
    replicas: list[PostgresWorklistStore],
) -> None:
    """A waiter on one replica wakes within a second of another replica's commit (its
    timeout is 30 s); when its listening connection is killed, a commit made meanwhile still
    wakes it (on reconnect) and the log re-read gives every entry, none invented."""
    watcher, writer = replicas[0], replicas[1]
    seq = watcher.latest_seq()
    assert not watcher.wait_for_events(seq, 0.3)  # nothing yet: it times out

    waiter = Waiter(watcher, seq)
    writer.record(_triaged("4.1"), lambda p: b"r")
    assert waiter.result(30) is True and waiter.waited < 2.0
    events = watcher.events_since(seq)
    assert [e.action for e in events] == ["queued"]
    seq = events[-1].seq

    listener = watcher._listener
    assert listener is not None and listener.backend_pid
    waiter = Waiter(watcher, seq)
    with psycopg.connect(watcher._url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (listener.backend_pid,))
    writer.record(_triaged("4.2"), lambda p: b"r")
    writer.record(_triaged("4.3"), lambda p: b"r")
    assert waiter.result(30) is True and waiter.waited < 5.0
    after = watcher.events_since(seq)
    with psycopg.connect(watcher._url) as db:
        stored = [r[0] for r in db.execute("SELECT seq FROM audit WHERE seq > %s", (seq,))]
    assert [e.seq for e in after] == sorted(stored) and len(after) == 2
    deadline = time.monotonic() + 10
    while not listener.backend_pid and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.backend_pid  # listening again on a new connection


def test_no_password_in_errors_or_logs(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password is refused naming the database with the password redacted; neither
    the message nor any log line carries the password given."""
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-" + PASSWORD
    url = postgres.url("postgres", password=wrong)
    with pytest.raises(WorklistError) as info:
        PostgresWorklistStore(url, connect_timeout=5)
    message = str(info.value)
    assert "cannot open the worklist database postgresql://triage:***@127.0.0.1:" in message
    assert "password authentication failed" in message
    assert wrong not in message and PASSWORD not in message
    assert wrong not in caplog.text and PASSWORD not in caplog.text
    assert (
        redact_url(postgres.url()) == f"postgresql://triage:***@127.0.0.1:{postgres.port}/postgres"
    )


@pytest.mark.slow
def test_serve_refuses_a_wrong_password_in_one_line_without_it(
    postgres: PostgresServer, bundle_path: Path
) -> None:
    """``triage serve`` with a wrong password in worklist.url exits 1 with one line naming the
    database (password redacted), and the password appears nowhere in its output."""
    wrong = "wrong-" + PASSWORD
    done = subprocess.run(
        [sys.executable, "-m", "service.apps.serve", "--bundle", str(bundle_path), "--port", "0",
         "--set", f"worklist.url={postgres.url('postgres', password=wrong)}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert wrong not in output
    refusal = [line for line in done.stderr.splitlines() if line.startswith("triage serve:")]
    assert len(refusal) == 1 and "postgresql://triage:***@" in refusal[0]
