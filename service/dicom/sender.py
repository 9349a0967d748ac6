"""The outbox sender: a C-STORE SCU (pynetdicom) per destination, retried with backoff.

One thread per destination takes due outbox rows with a lease (``dicom.send_lease_seconds``;
:meth:`~service.worklist.store.WorklistStore.claim_outbox`), opens one association proposing
only the (SOP class, transfer syntax) pairs of those rows, sends each object and marks its row
SENT on a success or warning status (0x0000, 0xB000, 0xB006, 0xB007). A refused association, a
connection that fails or a failure status counts an attempt and makes the row due again after
``dicom.send_backoff_seconds`` doubled per attempt, at most ``dicom.send_backoff_max_seconds``
(after ``dicom.send_max_attempts`` attempts, when set, the row is FAILED). Everything it needs is
in the store: a replica that dies leaves leased rows that another sender (or itself, restarted)
sends once the lease ran out, with the same bytes and so the same SOP Instance UIDs.

The outbox gauges (queued, sent, failed, oldest age) are refreshed from the store every
:data:`STATS_SECONDS`.
"""

from __future__ import annotations

import io
import os
import socket
import ssl
import threading
import time
import uuid
from typing import Any

import pydicom
from pynetdicom import AE

from service.config import DicomConfig
from service.dicom.destinations import Destination
from service.dicom.metrics import DicomMetrics
from service.worklist.store import OutboxEntry, WorklistStore
from triage_common.logging import get_logger

log = get_logger("service.dicom.sender")

#: C-STORE statuses that mean "stored" (success and the warnings of PS3.4 B.2.3).
STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
#: How often an idle sender looks for due rows, and the gauges are refreshed.
POLL_SECONDS = 0.2
STATS_SECONDS = 1.0
#: Rows one association sends at most.
BATCH = 16


def backoff(attempts: int, base: float, most: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2, ...)."""
    return float(min(most, base * 2.0 ** max(0, attempts - 1)))


def _tls(destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    if not destination.tls:
        return None
    context = ssl.create_default_context(cafile=destination.tls_ca or None)
    if destination.tls_cert:
        context.load_cert_chain(destination.tls_cert, destination.tls_key)
    return context, destination.host


class Sender:
    """Sends the outbox to the destinations (see the module doc)."""

    def __init__(
        self,
        store: WorklistStore,
        destinations: tuple[Destination, ...],
        config: DicomConfig,
        metrics: DicomMetrics,
    ) -> None:
        self.store = store
        self.destinations = destinations
        self.config = config
        self.metrics = metrics
        #: The lease owner: unique per process (a restarted server waits for its old leases).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """One thread per destination, and one for the gauges."""
        for d in self.destinations:
            self._threads.append(
                threading.Thread(target=self._loop, args=(d,), name=f"dicom-send-{d.name}")
            )
        self._threads.append(threading.Thread(target=self._stats, name="dicom-outbox-stats"))
        for t in self._threads:
            t.daemon = True
            t.start()
        log.info("dicom_sender_started", destinations=[d.name for d in self.destinations])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the objects being sent now."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _stats(self) -> None:
        names = [d.name for d in self.destinations]
        while True:
            try:
                self.metrics.outbox(self.store.outbox_stats(), names)
            except Exception as exc:  # a locked or closing database: next round
                log.warning("dicom_outbox_stats_failed", error=type(exc).__name__)
            if self._stop.wait(STATS_SECONDS):
                return

    def _loop(self, destination: Destination) -> None:
        while not self._stop.is_set():
            try:
                entries = self.store.claim_outbox(
                    destination.name, self.owner, BATCH, self.config.send_lease_seconds
                )
            except Exception as exc:
                log.warning("dicom_outbox_claim_failed", error=type(exc).__name__)
                entries = []
            if not entries:
                self._stop.wait(POLL_SECONDS)
                continue
            self.send_batch(destination, entries)

    def _failed(self, destination: Destination, entry: OutboxEntry, error: str) -> None:
        attempts = entry.attempts + 1
        limit = self.config.send_max_attempts
        give_up = bool(limit) and attempts >= limit
        wait = backoff(
            attempts, self.config.send_backoff_seconds, self.config.send_backoff_max_seconds
        )
        self.store.outbox_retry(entry.outbox_id, self.owner, error, time.time() + wait, give_up)
        self.metrics.attempt(destination.name, ok=False)
        log.warning(
            "dicom_send_failed",
            destination=destination.name,
            kind=entry.kind,
            attempt=attempts,
            retry_in_s=None if give_up else round(wait, 3),
            gave_up=give_up,
            reason=error,
        )

    def send_batch(self, destination: Destination, entries: list[OutboxEntry]) -> None:
        """Send leased rows over one association; mark each row (see the module doc)."""
        ae = AE(ae_title=destination.calling_ae_title or self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_seconds
        ae.connection_timeout = self.config.timeout_seconds
        pairs = sorted({(e.sop_class_uid, e.transfer_syntax_uid) for e in entries})
        for sop_class, syntax in pairs:
            ae.add_requested_context(sop_class, [syntax])
        assoc: Any = None
        try:
            assoc = ae.associate(
                destination.host,
                destination.port,
                ae_title=destination.ae_title,
                tls_args=_tls(destination),
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            error = f"cannot associate ({type(exc).__name__})"
        else:
            error = ""
            if not assoc.is_established:
                error = (
                    "association rejected" if assoc.is_rejected else "association failed"
                ) + f" by {destination.ae_title}@{destination.host}:{destination.port}"
        if error:
            for entry in entries:
                self._failed(destination, entry, error)
            return
        try:
            for entry in entries:
                if not assoc.is_established:
                    self._failed(destination, entry, "the association ended before this object")
                    continue
                self._send_one(destination, assoc, entry)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send_one(self, destination: Destination, assoc: Any, entry: OutboxEntry) -> None:
        dataset = pydicom.dcmread(io.BytesIO(entry.data))
        try:
            reply = assoc.send_c_store(dataset)
        except (ValueError, RuntimeError, OSError) as exc:
            self._failed(destination, entry, f"C-STORE could not be sent ({type(exc).__name__})")
            return
        status = int(reply.Status) if reply is not None and "Status" in reply else None
        if status in STORED:
            self.store.outbox_sent(entry.outbox_id, self.owner, not self.config.keep_sent_objects)
            self.metrics.attempt(destination.name, ok=True)
            log.info(
                "dicom_sent",
                destination=destination.name,
                kind=entry.kind,
                attempt=entry.attempts + 1,
                status=f"0x{status:04X}",
            )
            return
        shown = "no response" if status is None else f"status 0x{status:04X}"
        self._failed(destination, entry, f"C-STORE answered {shown}")
