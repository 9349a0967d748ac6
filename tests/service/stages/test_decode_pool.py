"""The decode worker pool: same results as in-process, and hostile data contained in workers."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from service.config import DecodeConfig, EligibilityConfig
from service.core.errors import (
    DeadlineExceeded,
    DecoderFailed,
    InvalidStudy,
    NotEligible,
    Overloaded,
    TooLarge,
)
from service.stages.decode_pool import DecodePool, DecodeSetup, InProcessDecoder
from tests.fuzz import bombs
from tests.helpers.dicom_factory import chest, file_bytes
from triage_common.preprocess import PreprocessSpec

REGRESSIONS = Path(__file__).resolve().parents[2] / "fuzz" / "regressions"
SETUP = DecodeSetup.from_config(DecodeConfig(), EligibilityConfig(), PreprocessSpec(size=128))


class Observer:
    """Records what the pool reports (the server's metrics in production)."""

    def __init__(self) -> None:
        self.tasks: Counter[str] = Counter()
        self.replaced: Counter[str] = Counter()
        self.busy: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def decode_task(self, seconds: float, outcome: str) -> None:
        """Count one study by outcome."""
        with self.lock:
            self.tasks[outcome] += 1

    def decode_worker_replaced(self, reason: str) -> None:
        """Count one replacement by reason."""
        with self.lock:
            self.replaced[reason] += 1

    def decode_workers_busy(self, busy: int, total: int) -> None:
        """Record the busy count."""
        with self.lock:
            self.busy.append((busy, total))


@pytest.fixture(name="observer")
def fixture_observer() -> Observer:
    """A fresh observer."""
    return Observer()


@pytest.fixture(name="pool")
def fixture_pool(observer: Observer) -> Iterator[DecodePool]:
    """One decode worker with the default limits."""
    pool = DecodePool(SETUP, workers=1, observer=observer)
    pool.start()
    yield pool
    pool.stop()


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm"])
def test_pool_gives_the_in_process_result_bit_for_bit(pool: DecodePool, name: str) -> None:
    """A study decoded in a worker, whole or as stream chunks, equals the in-process decode."""
    data = file_bytes(name)
    local = InProcessDecoder(SETUP).decode([data], want_display=True, deadline=None)
    chunks = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    for instance in (data, chunks):
        remote = pool.decode([instance], want_display=True, deadline=None)
        assert np.array_equal(remote.image, local.image)  # the same code on the same bytes
        assert remote.display is not None and local.display is not None
        assert np.array_equal(remote.display, local.display)
        assert (remote.reduce_level, remote.box) == (local.reduce_level, local.box)
        assert remote.selection.chosen == local.selection.chosen


def test_refusals_come_back_as_their_own_errors(pool: DecodePool, observer: Observer) -> None:
    """Errors raised in the worker reach the caller as the same class with the same message,
    and the worker stays (no replacement for an ordinary refusal)."""
    with pytest.raises(NotEligible, match="body part EXTREMITY is not CHEST"):
        pool.decode([file_bytes("RG3_UNCR.dcm")], want_display=False, deadline=None)
    with pytest.raises(InvalidStudy, match="not a DICOM Part-10 file"):
        pool.decode([b"\0" * 500], want_display=False, deadline=None)
    assert observer.tasks == Counter({"NotEligible": 1, "InvalidStudy": 1})
    assert not observer.replaced


def test_a_codec_panic_names_the_instance_and_the_worker_is_replaced(
    pool: DecodePool, observer: Observer
) -> None:
    """pylibjpeg-rle's PanicException (a BaseException) on a malformed RLE segment becomes
    INVALID_ARGUMENT for that instance; a fresh worker decodes the next study."""
    data = (REGRESSIONS / "rle_panic_index_out_of_bounds.dcm").read_bytes()
    lateral = chest(study_uid=pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID, ViewPosition="LL")
    with pytest.raises(DecoderFailed, match=r"instance 1: .*PanicException"):
        pool.decode([lateral, data], want_display=False, deadline=None)
    assert observer.replaced["codec failure"] == 1
    assert pool.decode([chest()], want_display=False, deadline=None).image.shape == (1, 128, 128)


def test_the_time_limit_kills_the_worker_and_names_the_limit(observer: Observer) -> None:
    """A decode past decode.worker_seconds ends in INVALID_ARGUMENT naming the limit and the
    instance; the killed worker is replaced and the next study decodes."""
    pool = DecodePool(SETUP, workers=1, task_seconds=0.01, observer=observer)
    pool.start()
    try:
        start = time.monotonic()
        with pytest.raises(InvalidStudy, match=r"instance 0: .*within 0.01 s \(decode.worker_"):
            pool.decode([file_bytes("RG1_J2KR.dcm")], want_display=False, deadline=None)
        assert time.monotonic() - start < 1.0
        assert observer.replaced["time limit"] == 1
        pid = pool._slots[0].process.pid
        pool.task_seconds = 2.0  # the replacement serves the next study
        assert pool.decode([chest(factor=16)], want_display=False, deadline=None).box >= 1
        assert pool._slots[0].process.pid == pid
    finally:
        pool.stop()


def test_a_shorter_deadline_gives_deadline_exceeded(pool: DecodePool) -> None:
    """When the client's deadline ends before the worker's limit, the call is DEADLINE_EXCEEDED."""
    with pytest.raises(DeadlineExceeded, match="deadline passed while decoding"):
        pool.decode(
            [file_bytes("RG1_J2KR.dcm")], want_display=False, deadline=time.monotonic() + 0.005
        )


def test_the_memory_limit_contains_a_bomb(observer: Observer) -> None:
    """A 6000 x 6000 RLE study (1.1 MB, 72 MB decoded) under a 256 MiB worker fails inside the
    worker with the limit named; the worker is replaced."""
    pool = DecodePool(SETUP, workers=1, memory_bytes=256 << 20, observer=observer)
    pool.start()
    try:
        with pytest.raises(InvalidStudy, match=r"256 MiB \(decode.worker_memory_mb"):
            pool.decode([bombs.rle_zeros(6000, 6000)], want_display=False, deadline=None)
        assert sum(observer.replaced.values()) == 1
        assert pool.decode([chest()], want_display=False, deadline=None).image.size
    finally:
        pool.stop()


def test_a_worker_killed_while_idle_is_replaced_transparently(
    pool: DecodePool, observer: Observer
) -> None:
    """A worker that died between studies (the OOM killer, an operator) costs no request."""
    os.kill(pool._slots[0].process.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert pool.decode([chest()], want_display=False, deadline=None).image.size
    assert observer.replaced["died while idle"] == 1


def test_a_study_larger_than_the_arena_gets_a_temporary_one(observer: Observer) -> None:
    """A study bigger than the worker's arena is decoded from a temporary arena, which goes
    away with the worker it was mapped in (its memory is given back)."""
    pool = DecodePool(SETUP, workers=1, arena_bytes=1 << 20, observer=observer)
    pool.start()
    try:
        data = file_bytes("RG1_UNCR.dcm")
        expected = InProcessDecoder(SETUP).decode([data], want_display=False, deadline=None)
        study = pool.decode([data], want_display=False, deadline=None)
        assert np.array_equal(study.image, expected.image)
        assert observer.replaced["large study arena released"] == 1
        assert pool.decode([chest()], want_display=False, deadline=None).image.size
    finally:
        pool.stop()


def test_no_free_worker_within_the_limit_is_overload(pool: DecodePool) -> None:
    """When every worker stays busy for decode.worker_seconds, the call is RESOURCE_EXHAUSTED
    with the reason, not a wait without end."""
    busy = pool._acquire(
        None, time.monotonic() + 10.0
    )  # the pool's one worker, held as a long study would hold it
    try:
        short = DecodePool(SETUP, workers=1, task_seconds=0.05)
        short._idle, short._slots = pool._idle, pool._slots  # the same, busy, worker
        with pytest.raises(Overloaded, match=r"all 1 decode workers stayed busy for 0.05 s"):
            short.decode([chest()], want_display=False, deadline=None)
    finally:
        pool._release(busy)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: bombs.rle_zeros(511, 65535), r"aspect ratio above 4 \(decode.max_aspect_ratio"),
        (lambda: bombs.jpeg_declaring(255, 65535), r"aspect ratio above 4"),
        (lambda: bombs.jpeg_declaring(6000, 6000), r"ratio above 250 \(decode.max_compression"),
        (lambda: bombs.jpegls_declaring(6000, 6000), r"ratio above 250"),
        (lambda: bombs.jpegls_declaring(10000, 10000), r"above the server's limit of 40000000"),
        (lambda: bombs.j2k_declaring(6000, 6000), r"ratio above 250"),
    ],
    ids=["rle-aspect", "jpeg-aspect", "jpeg-ratio", "jpegls-ratio", "jpegls-pixels",
         "j2k-ratio"],
)  # fmt: skip
def test_bombs_are_refused_from_the_header_naming_the_limit(
    pool: DecodePool, make: object, match: str
) -> None:
    """Each decompression bomb of the attack report is refused before any pixel is decoded,
    the reason naming the attribute and the configured limit, in well under a second."""
    data = make()  # type: ignore[operator]
    start = time.monotonic()
    with pytest.raises(TooLarge, match=match):
        pool.decode([data], want_display=False, deadline=None)
    assert time.monotonic() - start < 2.0  # within the worker's limit: the budget refused it


def test_a_deflate_bomb_is_refused_at_the_inflation_limit() -> None:
    """A 1 GiB deflate bomb is refused once it inflates past decode.max_inflated_bytes (8 MiB
    here, so that the test is quick on a busy machine), naming the limit."""
    config = DecodeConfig(max_inflated_bytes=8 << 20)
    setup = DecodeSetup.from_config(config, EligibilityConfig(), PreprocessSpec(size=128))
    pool = DecodePool(setup, workers=1)
    pool.start()
    try:
        with pytest.raises(TooLarge, match=r"more than 8388608 bytes \(decode.max_inflated_b"):
            pool.decode([bombs.deflate_bomb(1 << 30)], want_display=False, deadline=None)
    finally:
        pool.stop()


def test_a_valid_deflated_image_is_decoded(pool: DecodePool) -> None:
    """Deflated Explicit VR Little Endian images decode to the same model input as their
    uncompressed form."""
    deflated = pool.decode([bombs.deflated_chest()], want_display=False, deadline=None)
    plain = pool.decode([chest(factor=8, phi=False)], want_display=False, deadline=None)
    np.testing.assert_array_equal(deflated.image, plain.image)
