"""``triage bench worklist``: results written/s and claims/s for SQLite and PostgreSQL in one
run, every result claimed and completed once, bad options refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triage_tools.cli import main


def test_both_backends_measured_in_one_run(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short run gives one row per backend and replica count; every result written is then
    claimed exactly once and completed, and the share of the model's time is derived from the
    measured rate."""
    out = tmp_path / "worklist.json"
    code = main(
        ["bench", "worklist", "--postgres-url", postgres_url, "--studies", "40", "--replicas",
         "1,2", "--threads", "2", "--json", str(out)],
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out.read_text())
    assert [(r["backend"], r["replicas"]) for r in rows] == [
        ("sqlite", 1), ("sqlite", 2), ("postgresql", 1), ("postgresql", 2),
    ]  # fmt: skip
    for r in rows:
        assert r["results"] == r["claims"] == 40 and r["results_per_s"] > 0
        assert r["store_share_of_model"] == pytest.approx(
            1000.0 / r["results_per_s"] / r["model_ms_per_study"], rel=0.02
        )
    assert "s3cret" not in capsys.readouterr().out


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed replica list or a non-PostgreSQL URL is one line naming the flag, exit 2."""
    assert main(["bench", "worklist", "--replicas", "one"]) == 2
    assert "--replicas" in capsys.readouterr().err
    assert main(["bench", "worklist", "--postgres-url", "mysql://h/db"]) == 2
    assert "--postgres-url" in capsys.readouterr().err
