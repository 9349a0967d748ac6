"""Choosing the worklist backend: ``worklist.url`` (PostgreSQL) or ``worklist.path`` (SQLite);
the URL checked and redacted in configuration errors; two servers on one PostgreSQL database
share one worklist (a study sent to one is replayed by the other, Watch on one shows the other's
changes)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service._proto.triage.v1 import triage_pb2, worklist_pb2, worklist_pb2_grpc
from service.config import ConfigError, load_config
from service.core.errors import WorklistError
from service.worklist.open import open_worklist
from service.worklist.postgres import PostgresWorklistStore
from service.worklist.store import SqliteWorklistStore
from tests.helpers.dicom_factory import chest
from tests.helpers.servers import WorklistServerFactory, open_channel, worklist_stubs


def test_url_opens_postgres_and_path_opens_sqlite(postgres_url: str, tmp_path: Path) -> None:
    """A postgresql:// URL opens the PostgreSQL store (even with a path set), a path alone the
    SQLite file, neither no store at all."""
    pg = open_worklist(postgres_url, str(tmp_path / "w.db"))
    assert isinstance(pg, PostgresWorklistStore)
    pg.close()
    assert not (tmp_path / "w.db").exists()
    lite = open_worklist("", str(tmp_path / "w.db"))
    assert isinstance(lite, SqliteWorklistStore)
    lite.close()
    assert open_worklist("", "") is None
    with pytest.raises(WorklistError, match="must start with postgresql://"):
        open_worklist("mysql://u:pw@h/db", "")


def test_a_non_postgres_url_is_refused_with_the_value_redacted(tmp_path: Path) -> None:
    """Configuration refuses a worklist.url of another scheme, naming the key and hiding the
    value (it may carry a password)."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"TRIAGE_WORKLIST__URL": "mysql://u:hunter2@h/db"}, overrides={})
    assert "worklist.url" in str(info.value) and "hunter2" not in str(info.value)
    assert "must be a postgresql://" in str(info.value)


@pytest.mark.slow
def test_two_servers_on_one_database_share_the_worklist(
    worklist_server: WorklistServerFactory, postgres_url: str
) -> None:
    """A study triaged on one server is one item for both: the other replays it, claims it,
    and its Watch streams the first server's change within a second."""
    _, port_a = worklist_server(**{"worklist.url": postgres_url})
    _, port_b = worklist_server(**{"worklist.url": postgres_url})
    triage_a, _ = worklist_stubs(port_a)
    triage_b, worklist_b = worklist_stubs(port_b)
    channel = open_channel(port_b)
    watch = worklist_pb2_grpc.WorklistStub(channel).Watch(worklist_pb2.WatchRequest(), timeout=20)
    time.sleep(0.5)  # the stream has started (it begins at the newest entry)
    study = chest()
    t0 = time.monotonic()
    first = triage_a.Triage(triage_pb2.TriageRequest(instances=[study]), timeout=30)
    event = next(iter(watch))
    assert time.monotonic() - t0 < 5.0
    assert event.kind == "queued" and event.item.item_id == first.worklist_item_id
    watch.cancel()
    channel.close()
    again = triage_b.Triage(triage_pb2.TriageRequest(instances=[study]), timeout=30)
    assert again.replayed and again.worklist_item_id == first.worklist_item_id
    claimed = worklist_b.Claim(worklist_pb2.ClaimRequest(reader="dr-b", worklist=first.worklist))
    assert claimed.item_id == first.worklist_item_id and claimed.claimed_by == "dr-b"
