"""Configuration pieces of servers with the DICOM front door, for the tests and the bench."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

from service.rpc.server import TriageServer

#: ``factory(**dotted)`` starts a server with the SCP and gives it with the SCP's port.
DicomServerFactory = Callable[..., tuple[TriageServer, int]]


def dicom_overrides(work: Path, port: int, **dotted: Any) -> dict[str, Any]:
    """Keys of a server with the SCP on ``port``, its spool and worklist under ``work``, studies
    complete when their association is released, and fast retries."""
    return {
        "worklist.path": str(work / "worklist.db"),
        "dicom.port": port,
        "dicom.spool_dir": str(work / "spool"),
        "dicom.complete_on_release": True,
        "dicom.quiet_seconds": 1.0,
        "dicom.retry_seconds": 0.2,
        "dicom.send_backoff_seconds": 0.05,
        "dicom.send_backoff_max_seconds": 0.2,
        "dicom.send_lease_seconds": 2.0,
        **dotted,
    }


def destination(port: int, name: str = "pacs", **keys: Any) -> dict[str, Any]:
    """One ``[[dicom.destinations]]`` table for a storescp on loopback."""
    return {"name": name, "ae_title": "PACS", "host": "127.0.0.1", "port": port, **keys}


def study_of(path: Path) -> str:
    """The StudyInstanceUID of a DICOM file."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
