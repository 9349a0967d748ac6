"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

Phantom rendering allocates and frees a few dozen float arrays of about 1 MiB per study, and
the server a few MiB of request bytes per study. glibc returns such blocks to the kernel as
soon as the top of its heap is free, and the next use faults the same pages in again. Page
faults are dear on virtual machines: on the 2-core benchmark machine, rendering a 512-pixel
study took 500-1,600 faults and 1-4 ms of kernel time, and reassembling a 7 MB study from
1 MiB chunks took 17 ms instead of 3. Asking glibc to keep some slack at the top of the heap
(``M_TOP_PAD``) removes those faults. It changes no result, only where memory comes from; on
other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

#: glibc's ``mallopt`` parameter number for the top-of-heap padding (malloc.h).
M_TOP_PAD: Final = -2
#: glibc's ``mallopt`` parameter number for the most malloc arenas (malloc.h).
M_ARENA_MAX: Final = -8
#: Slack kept at the top of the heap: more than one study's working set (512-px phantom, or
#: a few concurrent 7 MB requests).
DEFAULT_PAD: Final = 64 << 20


def _mallopt(parameter: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(parameter, value))


def limit_arenas(arenas: int = 1) -> bool:
    """Cap glibc's malloc arenas (call before threads start; True when glibc accepted it).

    glibc gives threads arenas of their own (up to 8 per core); memory a gRPC thread freed in
    its arena stays there after a burst, where :func:`release_free_memory` cannot return it.
    Measured on this machine after a burst of 320 large or hostile studies from 8 clients:
    the server held 288 MB (idle 77 MB) with glibc's default, 84 MB with one arena.
    """
    return _mallopt(M_ARENA_MAX, arenas)


def retain_freed_memory(pad_bytes: int = DEFAULT_PAD) -> bool:
    """Ask glibc to keep ``pad_bytes`` of freed memory; True when the C library accepted it."""
    return _mallopt(M_TOP_PAD, pad_bytes)


def release_free_memory() -> bool:
    """Give freed heap memory back to the kernel now (glibc's ``malloc_trim(0)``).

    The counterpart of :func:`retain_freed_memory` for idle moments: a server keeps its slack
    while it is busy (no page faults per request) and returns it once a burst is over, so that
    memory taken by a burst of large studies does not stay pinned. True when glibc released any.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
