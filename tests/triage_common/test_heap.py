"""The allocator setting the renderer and the server rely on to keep freed memory."""

from __future__ import annotations

import platform
import sys

import pytest

from triage_common.heap import retain_freed_memory


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="M_TOP_PAD is a glibc setting",
)
def test_glibc_accepts_keeping_freed_memory() -> None:
    """On glibc Linux (the benchmark machine and the container) the heap setting takes effect."""
    assert retain_freed_memory() is True
