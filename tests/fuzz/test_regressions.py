"""Every input the fuzz campaign found hostile is replayed: a status with a reason, in time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import DecodeConfig, EligibilityConfig
from service.core.errors import TriageError
from service.rpc.server import configure_decoders
from service.stages.decode_pool import DecodePool, DecodeSetup
from triage_common.preprocess import PreprocessSpec

REGRESSIONS = sorted((Path(__file__).resolve().parent / "regressions").glob("*.dcm"))


@pytest.fixture(name="pool", scope="module")
def fixture_pool() -> Iterator[DecodePool]:
    """A decode pool with the server's default limits."""
    configure_decoders()
    setup = DecodeSetup.from_config(DecodeConfig(), EligibilityConfig(), PreprocessSpec(size=64))
    pool = DecodePool(setup, workers=1)
    pool.start()
    yield pool
    pool.stop()


def test_there_are_regression_files() -> None:
    """The corpus is in the repository (a missing folder would make the replay vacuous)."""
    assert REGRESSIONS


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_regression_input_gets_a_status_with_a_reason_in_time(pool: DecodePool, path: Path) -> None:
    """The input decodes or is refused with one of the service's errors and its reason, within
    the worker's 2 s, and the pool serves the next study."""
    start = time.monotonic()
    try:
        pool.decode([path.read_bytes()], want_display=False, deadline=None)
    except TriageError as exc:
        assert str(exc)
    assert time.monotonic() - start < 3.0  # 2 s limit plus a replacement worker's start
    assert pool.workers == 1 and pool._slots[0].process.is_alive()
