"""Fault tests: SIGKILL the server while clients submit (one server on SQLite; three replicas
on one PostgreSQL worklist); nothing acknowledged is lost, nothing is claimed twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triage_tools.durability import run_round

pytestmark = pytest.mark.slow


def test_sigkill_mid_stream_loses_and_duplicates_nothing(bundle_path: Path, tmp_path: Path) -> None:
    """Every acknowledged result is in the worklist exactly once after SIGKILL and restart, no
    item is half-written, and re-sent studies replay."""
    result = run_round(bundle_path, tmp_path, submitters=8, kill_after_acks=24)
    assert result.acknowledged >= 24
    assert (result.lost, result.duplicated, result.half_written, result.replay_failures) == (
        0,
        0,
        0,
        0,
    )
    assert not result.notes


def test_three_replicas_on_postgres_survive_a_sigkill_per_round(
    bundle_path: Path, postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``triage bench durability --worklist-url`` (3 replicas, 2 short rounds, one replica
    SIGKILLed and restarted in each): nothing acknowledged lost or duplicated, no item held by
    two readers at once, and the killed replica's readers' leases expire back to QUEUED."""
    from triage_tools.cli import main

    figures = tmp_path / "rounds.json"
    code = main(
        ["bench", "durability", "--bundle", str(bundle_path), "--worklist-url", postgres_url,
         "--replicas", "3", "--rounds", "2", "--round-seconds", "2", "--json", str(figures)],
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    rounds = json.loads(figures.read_text())
    assert len(rounds) == 2
    for r in rounds:
        assert r["acknowledged"] >= 10 and r["claims"] >= 1 and r["abandoned_leases"] >= 1
        assert (r["lost"], r["duplicated"], r["half_written"], r["replay_failures"]) == (0, 0, 0, 0)
        assert (r["double_claims"], r["leases_not_expired"], r["notes"]) == (0, 0, [])
    assert "s3cret" not in out.out + out.err  # the URL's password is printed nowhere
