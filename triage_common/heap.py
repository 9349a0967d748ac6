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
#: Slack kept at the top of the heap: more than one study's working set (512-px phantom, or
#: a few concurrent 7 MB requests).
DEFAULT_PAD: Final = 64 << 20


def retain_freed_memory(pad_bytes: int = DEFAULT_PAD) -> bool:
    """Ask glibc to keep ``pad_bytes`` of freed memory; True when the C library accepted it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TOP_PAD, pad_bytes))
