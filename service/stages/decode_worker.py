"""The decode worker process: :func:`service.stages.study.decode_study` on untrusted bytes.

A worker is started by :class:`service.stages.decode_pool.DecodePool` (forkserver, with this
module preloaded). It limits its own address space (``RLIMIT_AS``), receives two memfd arenas
(the instances in, the model input out), and then serves tasks until it is told to stop, its
parent goes away, or it is killed. Every outcome of a task is a reply (``ok``, ``error`` with a
core exception's class and message, ``memory`` when an allocation failed, ``crash`` for any
other exception, ``BaseException`` subclasses from native extensions included); a worker that
dies or hangs is the supervisor's to detect. The first 8 bytes of the output arena hold the
index of the instance being worked on, so a supervisor can name it after a crash or a timeout.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import resource
import signal
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from service.config import EligibilityConfig
from service.core.errors import DecoderFailed, TriageError
from service.stages.decode import DecodeOptions
from service.stages.study import decode_study
from triage_common.heap import limit_arenas, release_free_memory, retain_freed_memory
from triage_common.preprocess import PreprocessSpec


def _preload_codecs() -> None:
    """Import what pydicom loads lazily on the first pixel decode (its decoders and the
    pylibjpeg plugins, Pillow's JPEG 2000 plugin), so that the forkserver holds them and a new
    worker's first study costs no imports (under load that once took the 2 s limit)."""
    import contextlib
    import importlib

    for name in (
        "pydicom.pixels.decoders.pylibjpeg",
        "pydicom.pixels.decoders.rle",
        "pydicom.pixels.decoders.base",
        "openjpeg",
        "libjpeg",
        "rle",
        "PIL.Jpeg2KImagePlugin",
    ):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


_preload_codecs()

#: Freed memory a worker keeps for the next study (a JPEG 2000 decode needs tens of MB).
RETAINED_BYTES = 64 << 20
#: Resident memory above the worker's idle figure past which freed memory is returned at once
#: (above what it retains on purpose).
TRIM_ABOVE_BASELINE = RETAINED_BYTES + (64 << 20)
#: A worker idle this long returns everything it kept (as the server does after its calls stop).
IDLE_TRIM_SECONDS = 5.0
#: Bytes at the start of the output arena: the current instance index (int64; -1: none).
OUT_HEADER = 64


@dataclass(frozen=True)
class WorkerSettings:
    """What every task of a worker shares."""

    options: DecodeOptions
    rules: EligibilityConfig
    spec: PreprocessSpec
    memory_bytes: int
    task_seconds: float


@dataclass(frozen=True)
class Task:
    """One study: where each instance lies in the input arena, and what to send back."""

    layout: tuple[tuple[int, int], ...]  # (offset, length) per instance
    want_display: bool
    new_arena: int = 0  # > 0: a new input arena of this size; its fd follows the task


def rss_bytes() -> int:
    """This process's resident set size (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent (the forkserver) goes away."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _quiet_stderr() -> None:
    """Send what native codecs print (a Rust panic's multi-line report, decoder chatter) to
    /dev/null: outcomes travel through the pipe and the server logs them as JSON lines."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _map(conn: Connection, size: int) -> mmap.mmap:
    fd = reduction.recv_handle(conn)
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _run(task: Task, arena: mmap.mmap, out: mmap.mmap, settings: WorkerSettings) -> tuple[Any, ...]:
    progress = np.frombuffer(out, dtype=np.int64, count=1)
    progress[0] = -1

    def at(index: int) -> None:
        progress[0] = index

    view = memoryview(arena)
    instances = [view[o : o + n] for o, n in task.layout]
    try:
        study = decode_study(
            instances,
            settings.options,
            settings.rules,
            settings.spec,
            want_display=task.want_display,
            at=at,
        )
    except DecoderFailed as exc:  # the codec's state is suspect: reply, then be replaced
        return ("failed", type(exc).__name__, str(exc))
    except TriageError as exc:
        return ("error", type(exc).__name__, str(exc))
    except MemoryError:
        return ("memory", int(progress[0]))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # native extensions raise BaseException subclasses too
        return ("crash", type(exc).__name__, int(progress[0]))
    finally:
        del instances, view  # views on the arena; a new arena replaces it only when none is left
    image = np.ascontiguousarray(study.image, dtype=np.float32)
    end = OUT_HEADER + image.nbytes
    out[OUT_HEADER:end] = image.tobytes()
    inline = None
    display_shape = None
    if study.display is not None:
        display = np.ascontiguousarray(study.display, dtype=np.float32)
        display_shape = display.shape
        if end + display.nbytes <= len(out):
            out[end : end + display.nbytes] = display.tobytes()
        else:
            inline = display
    meta = dataclasses.replace(study, image=np.empty(0, np.float32), display=None)
    return ("ok", meta, image.shape, display_shape, inline)


def serve(conn: Connection, settings: WorkerSettings, in_size: int, out_size: int) -> None:
    """The worker's main loop (the target of its process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    _die_with_parent()
    _quiet_stderr()
    limit_arenas()  # one malloc arena, as in the server
    retain_freed_memory(RETAINED_BYTES)  # a codec's buffers reused, not faulted in each study
    limit = settings.memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    arena = _map(conn, in_size)
    out = _map(conn, out_size)
    baseline = rss_bytes()
    trimmed = True
    while True:
        if not trimmed and not conn.poll(IDLE_TRIM_SECONDS):
            release_free_memory()  # idle: what it kept for the next study goes back as well
            trimmed = True
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        if task is None:
            return
        if task.new_arena:  # the old map is unmapped once nothing refers to it any more
            arena = _map(conn, task.new_arena)
        # a backstop should the supervisor be gone: SIGALRM ends a task running far too long
        signal.setitimer(signal.ITIMER_REAL, 4.0 * settings.task_seconds + 1.0)
        reply = _run(task, arena, out, settings)
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        if rss_bytes() > baseline + TRIM_ABOVE_BASELINE:
            release_free_memory()  # a large study's buffers go back to the system
        trimmed = False
        conn.send((*reply, rss_bytes()))
