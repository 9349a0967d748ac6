"""``triage worklist outbox``: the DICOM outbox of a worklist database, as tables or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core.enums import Decision, Priority
from service.worklist.store import NewObject, SqliteWorklistStore, Triaged
from triage_tools.cli import main


def _store(path: Path) -> None:
    store = SqliteWorklistStore(path)
    triaged = Triaged("1.2.3", "b1", "p1", 0.2, Decision.DEFER, "radiologist", Priority.ROUTINE)
    sr = NewObject("SR", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.9", "1.2.840.10008.1.2.1", b"x",
                   ("pacs",))  # fmt: skip
    store.record(triaged, lambda p: b"r", lambda p: [sr])
    (row,) = store.claim_outbox("pacs", "me")
    store.outbox_retry(row.outbox_id, "me", "association rejected by PACS", 0.0)
    store.close()


def test_outbox_lists_rows_and_totals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON form names each row's state, attempts and last error, and the totals per
    destination; a missing file is a one-line refusal with exit code 2."""
    db = tmp_path / "worklist.db"
    _store(db)
    assert main(["worklist", "outbox", "--db", str(db), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    (row,) = listing["rows"]
    assert (row["kind"], row["state"], row["attempts"]) == ("SR", "QUEUED", 1)
    assert row["last_error"] == "association rejected by PACS"
    assert listing["destinations"]["pacs"]["queued"] == 1
    assert main(["worklist", "outbox", "--db", str(db), "--state", "SENT"]) == 0
    assert "0 row(s)" in capsys.readouterr().out
    assert main(["worklist", "outbox", "--db", str(tmp_path / "none.db")]) == 2
    assert "--db" in capsys.readouterr().err


def test_outbox_reads_the_postgres_worklist(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--url`` reads the same rows from the PostgreSQL worklist; a URL of another scheme, or
    a wrong password, is a one-line refusal (exit 2) without the password."""
    from service.worklist.postgres import PostgresWorklistStore

    store = PostgresWorklistStore(postgres_url)
    triaged = Triaged("1.2.3", "b1", "p1", 0.2, Decision.DEFER, "radiologist", Priority.ROUTINE)
    sr = NewObject("SR", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.9", "1.2.840.10008.1.2.1", b"x",
                   ("pacs",))  # fmt: skip
    store.record(triaged, lambda p: b"r", lambda p: [sr])
    store.close()
    assert main(["worklist", "outbox", "--url", postgres_url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert (row["kind"], row["state"], row["destination"]) == ("SR", "QUEUED", "pacs")
    assert main(["worklist", "outbox", "--url", "mysql://u:pw@h/db"]) == 2
    assert "--url must be a postgresql://" in capsys.readouterr().err
    user, rest = postgres_url.split("://", 1)[1].split(":", 1)
    wrong = postgres_url.replace(rest.split("@", 1)[0], "not-it-at-all", 1)
    assert main(["worklist", "outbox", "--url", wrong]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not-it-at-all" not in err and user in err
