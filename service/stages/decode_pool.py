"""Decoding untrusted DICOM in a pool of worker processes with memory and time limits.

Every instance of a study is parsed and its chosen image decoded in a decode worker
(:mod:`service.stages.decode_worker`), never in a gRPC thread: native codecs (RLE, JPEG,
JPEG-LS, JPEG 2000, zlib) run there on hostile bytes. A worker

- limits its address space (``decode.worker_memory_mb``, RLIMIT_AS): an allocation past it fails
  inside the worker and the call gets INVALID_ARGUMENT naming the limit;
- gets ``decode.worker_seconds`` of wall-clock time per study, waiting for a free worker
  included (so every call is answered within it): past it the worker is killed (SIGKILL) and
  replaced, and the call gets INVALID_ARGUMENT naming the limit and the instance, or
  DEADLINE_EXCEEDED when the client's own deadline was the shorter, or RESOURCE_EXHAUSTED when
  the study lost much of its time queueing behind busy workers (the load, not the data);
- is replaced after a crash (a signal, a Rust panic, anything else), after a memory failure,
  after ``decode.worker_max_tasks`` studies, and when its resident memory passed
  :data:`RECYCLE_RSS_BYTES` (the memory goes back to the system).

Hand-over: each worker owns two memfd arenas mapped in both processes. The request thread copies
the instances (or their stream chunks, in order: no join) into the input arena, one copy; the
worker reads them in place (headers through a file object over the view, native pixels as a
numpy view) and writes the model input (and, for overlays, the display image) into the output
arena. Workers are forked from a forkserver with the decode modules preloaded (no gRPC threads
are ever forked; a replacement starts in milliseconds).

:class:`InProcessDecoder` is the same work in the calling thread (``decode.in_process``), with
none of these protections.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np

from service.config import DecodeConfig, EligibilityConfig
from service.core import errors
from service.core.errors import (
    DeadlineExceeded,
    DecoderFailed,
    InvalidStudy,
    NotReady,
    Overloaded,
    TooLarge,
    TriageError,
)
from service.core.types import DecodedStudy
from service.stages.decode import DecodeOptions
from service.stages.decode_worker import OUT_HEADER, Task, WorkerSettings, serve
from service.stages.study import decode_study
from triage_common.logging import get_logger
from triage_common.onnx_runtime import usable_cores
from triage_common.preprocess import PreprocessSpec

log = get_logger("service.decode_pool")

#: One instance as a front door holds it: the whole file, or its stream chunks in order.
InstanceBytes = bytes | Sequence[bytes]

#: The input arena each worker keeps mapped (larger studies get a temporary one).
BASE_ARENA_BYTES = 32 << 20
#: A worker whose resident memory passed this after a study is replaced.
RECYCLE_RSS_BYTES = 384 << 20
#: A study that spent more than this share of its time limit waiting for a worker and then ran
#: out of time is reported as overload (RESOURCE_EXHAUSTED), not as bad data.
QUEUE_SHARE = 0.25
#: Automatic worker count is one per usable core, at most this many.
MAX_AUTO_WORKERS = 4

#: Exceptions a worker may report by class name (the core errors; anything else is a crash).
_ERRORS: dict[str, type[TriageError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, TriageError)
}


class StudyDecoder(Protocol):
    """What the pipeline's prepare step calls: instances -> :class:`DecodedStudy`."""

    def decode(
        self, instances: Sequence[InstanceBytes], *, want_display: bool, deadline: float | None
    ) -> DecodedStudy: ...


class PoolObserver(Protocol):
    """Where the pool reports its health (the server's metrics)."""

    def decode_task(self, seconds: float, outcome: str) -> None: ...

    def decode_worker_replaced(self, reason: str) -> None: ...

    def decode_workers_busy(self, busy: int, total: int) -> None: ...


def _as_bytes(instance: InstanceBytes) -> bytes:
    return instance if isinstance(instance, bytes) else b"".join(instance)


def _size(instance: InstanceBytes) -> int:
    return len(instance) if isinstance(instance, bytes) else sum(len(c) for c in instance)


@dataclass(frozen=True)
class DecodeSetup:
    """What decoding needs besides the bytes: the options, the rules and the bundle's spec."""

    options: DecodeOptions
    rules: EligibilityConfig
    spec: PreprocessSpec

    @classmethod
    def from_config(
        cls, decode: DecodeConfig, rules: EligibilityConfig, spec: PreprocessSpec
    ) -> DecodeSetup:
        """The setup ``decode.*`` and ``eligibility.*`` give for a bundle's preprocessing."""
        return cls(DecodeOptions.from_config(decode, spec.size), rules, spec)


class InProcessDecoder:
    """:func:`decode_study` in the calling thread (no isolation: trusted input only)."""

    def __init__(self, setup: DecodeSetup) -> None:
        self.setup = setup

    def decode(
        self, instances: Sequence[InstanceBytes], *, want_display: bool, deadline: float | None
    ) -> DecodedStudy:
        """Decode the study here."""
        del deadline
        s = self.setup
        data = [_as_bytes(i) for i in instances]
        try:
            return decode_study(data, s.options, s.rules, s.spec, want_display=want_display)
        except MemoryError:
            raise TooLarge("not enough memory to decode the pixel data") from None

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""


class _Memfd:
    """An anonymous shared memory file of a fixed size, mapped here."""

    def __init__(self, size: int, name: str) -> None:
        import mmap

        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it later
            self.map.close()
        os.close(self.fd)


@dataclass
class _Slot:
    """One worker process with its arenas."""

    number: int
    arena: _Memfd
    out: _Memfd
    process: Any = None
    conn: Connection | None = None
    tasks: int = 0


class DecodePool:
    """Worker processes that decode studies under memory and time limits (see the module doc)."""

    def __init__(
        self,
        setup: DecodeSetup,
        *,
        workers: int = 0,
        memory_bytes: int = 768 << 20,
        task_seconds: float = 2.0,
        max_tasks: int = 1000,
        observer: PoolObserver | None = None,
        arena_bytes: int = BASE_ARENA_BYTES,
    ) -> None:
        self.setup = setup
        self.arena_bytes = arena_bytes
        self.workers = workers or max(1, min(MAX_AUTO_WORKERS, usable_cores()))
        self.memory_bytes = memory_bytes
        self.task_seconds = task_seconds
        self.max_tasks = max_tasks
        self.observer = observer
        side = setup.spec.size
        self._out_bytes = OUT_HEADER + 4 * side * side + (16 << 20)
        self._slots: list[_Slot] = []
        self._idle: queue.Queue[_Slot] = queue.Queue()
        self._busy = 0
        self._lock = threading.Lock()
        self._stopped = False
        self._context: Any = None

    @classmethod
    def from_config(
        cls,
        decode: DecodeConfig,
        rules: EligibilityConfig,
        spec: PreprocessSpec,
        observer: PoolObserver | None = None,
    ) -> DecodePool:
        """The pool ``decode.*`` configures."""
        return cls(
            DecodeSetup.from_config(decode, rules, spec),
            workers=decode.workers,
            memory_bytes=decode.worker_memory_mb << 20,
            task_seconds=decode.worker_seconds,
            max_tasks=decode.worker_max_tasks,
            observer=observer,
        )

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers (the forkserver too, the first time in this process)."""
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # workers need no BLAS threads
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["service.stages.decode_worker"])
        for number in range(self.workers):
            slot = _Slot(
                number,
                _Memfd(self.arena_bytes, "triage-decode-in"),
                _Memfd(self._out_bytes, "triage-decode-out"),
            )
            self._spawn(slot)
            self._slots.append(slot)
            self._idle.put(slot)
        self._report_busy()
        log.info("decode_pool_started", workers=self.workers, memory_mb=self.memory_bytes >> 20,
                 task_seconds=self.task_seconds)  # fmt: skip

    def stop(self) -> None:
        """Stop every worker (idle ones at once; later calls get NotReady)."""
        self._stopped = True
        for slot in self._slots:
            self._end(slot, graceful=True)
            slot.arena.close()
            slot.out.close()
        self._slots.clear()

    def _spawn(self, slot: _Slot) -> None:
        parent, child = self._context.Pipe(duplex=True)
        settings = WorkerSettings(
            self.setup.options,
            self.setup.rules,
            self.setup.spec,
            self.memory_bytes,
            self.task_seconds,
        )
        process = self._context.Process(
            target=serve,
            args=(child, settings, slot.arena.size, slot.out.size),
            name=f"triage-decode-{slot.number}",
            daemon=True,
        )
        process.start()
        child.close()
        reduction.send_handle(parent, slot.arena.fd, process.pid)
        reduction.send_handle(parent, slot.out.fd, process.pid)
        slot.process, slot.conn, slot.tasks = process, parent, 0

    def _end(self, slot: _Slot, *, graceful: bool) -> None:
        process, conn = slot.process, slot.conn
        if process is None or conn is None:
            return
        if graceful and process.is_alive():
            with contextlib.suppress(OSError):
                conn.send(None)
            process.join(2.0)
        if process.is_alive():
            process.kill()
            process.join(2.0)
        conn.close()
        slot.process, slot.conn = None, None

    def _replace(self, slot: _Slot, reason: str, *, graceful: bool = False) -> None:
        self._end(slot, graceful=graceful)
        if self.observer is not None:
            self.observer.decode_worker_replaced(reason)
        log.info("decode_worker_replaced", worker=slot.number, reason=reason)
        if not self._stopped:
            self._spawn(slot)

    def _report_busy(self) -> None:
        if self.observer is not None:
            self.observer.decode_workers_busy(self._busy, self.workers)

    # -- one study ----------------------------------------------------------------------------

    def decode(
        self, instances: Sequence[InstanceBytes], *, want_display: bool, deadline: float | None
    ) -> DecodedStudy:
        """Decode one study in a worker; raises core errors (a worker's fate included)."""
        if self._stopped:
            raise NotReady("the service is shutting down")
        start = time.perf_counter()
        queued = time.monotonic()
        budget_end = queued + self.task_seconds  # waiting for a worker counts too
        slot = self._acquire(deadline, budget_end)
        waited = time.monotonic() - queued
        outcome = "ok"
        try:
            return self._run(slot, instances, want_display, deadline, budget_end, waited)
        except TriageError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if self.observer is not None:
                self.observer.decode_task(time.perf_counter() - start, outcome)
            self._release(slot)

    def _acquire(self, deadline: float | None, budget_end: float) -> _Slot:
        """An idle worker; waiting for one counts against the study's decode time limit."""
        timeout = max(0.0, budget_end - time.monotonic())
        by_deadline = deadline is not None and deadline < budget_end
        if deadline is not None and by_deadline:
            timeout = max(0.0, deadline - time.monotonic())
        try:
            slot = self._idle.get(timeout=timeout)
        except queue.Empty:
            if by_deadline:
                raise DeadlineExceeded(
                    "the deadline passed while waiting for a decode worker"
                ) from None
            raise Overloaded(
                f"all {self.workers} decode workers stayed busy for {self.task_seconds:g} s "
                "(decode.worker_seconds); retry later"
            ) from None
        with self._lock:
            self._busy += 1
        self._report_busy()
        return slot

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            self._busy -= 1
        self._report_busy()
        if not self._stopped:
            self._idle.put(slot)

    def _copy_in(
        self, slot: _Slot, instances: Sequence[InstanceBytes], want_display: bool
    ) -> tuple[Task, _Memfd | None]:
        """Copy the instances into the worker's input arena (a bigger temporary one if needed)."""
        total = sum(_size(i) for i in instances)
        arena, temporary = slot.arena, None
        if total > arena.size:
            size = 1 << max(20, math.ceil(math.log2(total)))
            temporary = arena = _Memfd(size, "triage-decode-in-large")
        layout = []
        pos = 0
        for instance in instances:
            start = pos
            for chunk in (instance,) if isinstance(instance, bytes) else instance:
                arena.map[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
            layout.append((start, pos - start))
        new_arena = temporary.size if temporary is not None else 0
        return Task(tuple(layout), want_display, new_arena), temporary

    def _usable(self, slot: _Slot) -> tuple[Connection, Any]:
        """The slot's connection and process, a fresh worker if the old one died while idle."""
        if slot.process is None or not slot.process.is_alive():
            self._replace(slot, "died while idle")
        assert slot.conn is not None
        return slot.conn, slot.process

    def _run(
        self,
        slot: _Slot,
        instances: Sequence[InstanceBytes],
        want_display: bool,
        deadline: float | None,
        budget_end: float,
        waited: float,
    ) -> DecodedStudy:
        conn, process = self._usable(slot)
        task, temporary = self._copy_in(slot, instances, want_display)
        try:
            conn.send(task)
            if temporary is not None:
                reduction.send_handle(conn, temporary.fd, process.pid)
            reply = self._wait(slot, deadline, budget_end, waited)  # replaces a failed worker
        finally:
            if temporary is not None:
                temporary.close()
        slot.tasks += 1
        kind, rss = reply[0], int(reply[-1])
        renew = ""
        if temporary is not None:
            renew = "large study arena released"  # the worker maps the base arena again
        elif slot.tasks >= self.max_tasks or rss > RECYCLE_RSS_BYTES:
            renew = "recycled"
        if kind == "ok":
            study = self._study(slot, reply, want_display)
            if renew:
                self._replace(slot, renew, graceful=True)
            return study
        if kind == "error":
            if renew:
                self._replace(slot, renew, graceful=True)
            raise _ERRORS.get(reply[1], InvalidStudy)(reply[2])
        if kind == "failed":
            self._replace(slot, "codec failure")
            raise DecoderFailed(f"{reply[2]} (within the worker's {self._limits})")
        if kind == "memory":
            self._replace(slot, "memory limit")
            raise InvalidStudy(
                f"{_where(int(reply[1]))}pixel data could not be decoded within "
                f"{self.memory_bytes >> 20} MiB (decode.worker_memory_mb)"
            )
        self._replace(slot, "crash")
        raise DecoderFailed(
            f"{_where(int(reply[2]))}the decoder failed on the data ({reply[1]}): "
            f"malformed or hostile pixel data (within the worker's {self._limits})"
        )

    @property
    def _limits(self) -> str:
        return (
            f"limits of {self.task_seconds:g} s and {self.memory_bytes >> 20} MiB "
            "(decode.worker_seconds, decode.worker_memory_mb)"
        )

    def _wait(
        self, slot: _Slot, deadline: float | None, budget_end: float, waited: float
    ) -> tuple[Any, ...]:
        """The worker's reply; ``waited`` is the time the study spent queueing for it."""
        conn, out = slot.conn, slot.out
        assert conn is not None
        started = time.monotonic()
        limit = max(0.0, budget_end - started)
        by_deadline = False
        if deadline is not None and deadline < budget_end:
            limit, by_deadline = max(0.0, deadline - started), True
        try:
            if conn.poll(limit):
                reply: tuple[Any, ...] = conn.recv()
                return reply
        except (EOFError, OSError, BrokenPipeError):
            index = _progress(out)
            code = slot.process.exitcode if slot.process is not None else None
            self._replace(slot, "crash")
            raise DecoderFailed(
                f"{_where(index)}the decoder process died on the data (exit status {code}): "
                f"malformed or hostile pixel data (within the worker's {self._limits})"
            ) from None
        index = _progress(out)
        self._replace(slot, "deadline" if by_deadline else "time limit")
        if by_deadline:
            raise DeadlineExceeded(f"{_where(index)}the deadline passed while decoding")
        if waited > QUEUE_SHARE * self.task_seconds:  # the server's load, not the data's fault
            raise Overloaded(
                f"the decode workers were busy: the study waited {waited:.2f} s for one and was "
                f"not decoded in the {limit:.2f} s left of its {self.task_seconds:g} s "
                "(decode.worker_seconds); retry later"
            )
        raise InvalidStudy(
            f"{_where(index)}pixel data could not be decoded within {self.task_seconds:g} s "
            "(decode.worker_seconds)"
        )

    def _study(self, slot: _Slot, reply: tuple[Any, ...], want_display: bool) -> DecodedStudy:
        import dataclasses

        _, meta, image_shape, display_shape, inline, _rss = reply
        buffer = slot.out.map
        count = int(np.prod(image_shape))
        image = np.frombuffer(buffer, np.float32, count, OUT_HEADER).reshape(image_shape).copy()
        display = None
        if want_display and display_shape is not None:
            if inline is not None:
                display = inline
            else:
                offset = OUT_HEADER + 4 * count
                n = int(np.prod(display_shape))
                display = np.frombuffer(buffer, np.float32, n, offset).reshape(display_shape).copy()
        study: DecodedStudy = dataclasses.replace(meta, image=image, display=display)
        return study


def _progress(out: _Memfd) -> int:
    return int(np.frombuffer(out.map, np.int64, 1)[0])


def _where(index: int) -> str:
    return f"instance {index}: " if index >= 0 else ""


def make_decoder(
    decode: DecodeConfig,
    rules: EligibilityConfig,
    spec: PreprocessSpec,
    observer: PoolObserver | None = None,
) -> DecodePool | InProcessDecoder:
    """The decoder ``decode.*`` asks for: the worker pool, or in-process with ``in_process``."""
    if decode.in_process:
        return InProcessDecoder(DecodeSetup.from_config(decode, rules, spec))
    return DecodePool.from_config(decode, rules, spec, observer)
