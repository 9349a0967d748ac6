"""Fault test: SIGKILL the server while 8 clients submit; nothing acknowledged is lost."""

from __future__ import annotations

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
