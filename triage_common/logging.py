"""structlog configured in one place: JSON lines when stderr is not a terminal, colours when it is.

Patient data never goes into an event: study UIDs are logged only through :func:`hash_uid`.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any

import structlog

_configured = False


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of each write (not at configure time).

    Keeps log output working when ``sys.stderr`` is swapped after logging was configured
    (pytest's capture, daemons redirecting their streams).
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def hash_uid(uid: str) -> str:
    """A stable, non-reversible 16-hex-digit token for a DICOM UID, safe for logs and metrics."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:16]


def configure_logging(level: str = "INFO", json_output: bool | None = None) -> None:
    """Configure structlog and the standard library logging once for the whole process."""
    global _configured
    if json_output is None:
        json_output = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=numeric, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    _configured = True


def get_logger(name: str) -> Any:
    """A structlog logger bound to ``name`` (configures defaults on first use)."""
    if not _configured:
        configure_logging()
    return structlog.get_logger(name)
