"""The DICOM front door: a Storage SCP (pynetdicom) beside the gRPC server.

Association control, in order (``dicom.allowed_callers``, :mod:`service.dicom.callers`):

1. a connection from a host no entry names is closed at once (before any PDU);
2. a calling AE title no entry names is rejected (A-ASSOCIATE-RJ: calling AE title not
   recognised), and so is a called AE title other than ``dicom.ae_title``;
3. a known title calling from a host its entries do not name is aborted right after the
   association is established, before any C-STORE.

Accepted: Verification (C-ECHO) and the storage SOP classes of ``dicom.sop_classes`` in the
transfer syntaxes of ``dicom.transfer_syntaxes``; at most ``dicom.max_associations`` at once;
ACSE, DIMSE and network timeouts ``dicom.timeout_seconds``.

C-STORE (:meth:`StorageSCP.on_store`, the one boundary where exceptions become statuses, from
:data:`service.dicom.status.STORE_STATUS_TABLE`): pynetdicom writes the data set to a temporary
file as it arrives (no instance is held in memory whole by the network layer); its header is
parsed with the decode stage's budgets (:func:`service.stages.header.read_header`: no pixel
data is decoded here), checked against the request, and the instance is spooled durably
(:mod:`service.dicom.spool`) before Success is answered.

Logs: one line per association (calling and called AE titles, peer address, instances stored,
outcome) and one per refused instance (status, reason, hashed study UID); no patient data.
pynetdicom's own logger is kept at WARNING (its INFO and DEBUG lines quote identifiers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from service.config import DecodeConfig, DicomConfig
from service.dicom.callers import Callers
from service.dicom.intake import Intake
from service.dicom.metrics import DicomMetrics
from service.dicom.spool import StudyMeta
from service.dicom.status import (
    STATUS_NAMES,
    SUCCESS,
    NotAccepted,
    SpoolFull,
    store_status,
)
from service.stages.header import read_header
from triage_common.logging import get_logger, hash_uid

log = get_logger("service.dicom")


def quiet_pynetdicom() -> None:
    """pynetdicom's logging at WARNING and its store path receiving to a file (process-wide)."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.STORE_RECV_CHUNKED_DATASET = True


class _VettedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server that closes connections from hosts not allowed."""

    vet: Callable[[str], bool] = staticmethod(lambda host: True)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0]) if isinstance(client_address, tuple) else ""
        return bool(self.vet(host))


class StorageSCP:
    """The Storage SCP (see the module doc)."""

    def __init__(
        self, config: DicomConfig, decode: DecodeConfig, intake: Intake, metrics: DicomMetrics
    ) -> None:
        quiet_pynetdicom()
        self.config = config
        self.decode = decode
        self.intake = intake
        self.metrics = metrics
        self.callers = Callers(config.allowed_callers)
        self.port = 0
        self._server: Any = None
        self._draining = threading.Event()
        self._stored: dict[int, int] = {}  # association -> instances stored
        self._lock = threading.Lock()
        ae = AE(ae_title=config.ae_title)
        ae.maximum_associations = config.max_associations
        ae.maximum_pdu_size = config.max_pdu
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = config.timeout_seconds
        ae.require_called_aet = True
        ae.require_calling_aet = self.callers.titles
        for sop_class in config.sop_classes:
            ae.add_supported_context(sop_class, list(config.transfer_syntaxes))
        ae.add_supported_context(Verification)
        self.ae = ae

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> int:
        """Bind ``dicom.host:dicom.port`` and serve in the background; returns the port."""
        if self.callers.open:
            log.warning(
                "dicom_any_caller",
                hint="dicom.allowed_callers is empty: any host and AE title may store studies",
            )
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_RELEASED, self.on_ended),
            (evt.EVT_ABORTED, self.on_ended),
        ]
        server: Any = self.ae.make_server(
            (self.config.host, self.config.port),
            evt_handlers=handlers,
            server_class=_VettedServer,
        )
        server.vet = self._vet
        self.ae._servers.append(server)  # as AE.start_server does: AE.shutdown stops it
        self._server = server
        self.port = int(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
        thread.start()
        log.info(
            "dicom_listening",
            port=self.port,
            host=self.config.host,
            ae_title=self.config.ae_title,
            sop_classes=len(self.config.sop_classes),
            transfer_syntaxes=len(self.config.transfer_syntaxes),
            callers=len(self.callers.entries),
        )
        return self.port

    def drain(self) -> None:
        """Refuse new instances (0xA700) and close the listening socket."""
        self._draining.set()
        self._server = None
        self.ae.shutdown()

    # -- association events ------------------------------------------------------------------

    def _vet(self, host: str) -> bool:
        if self.callers.host_allowed(host):
            return True
        self.metrics.association("refused_host")
        log.warning("dicom_connection_refused", peer=host, reason="host not in allowed_callers")
        return False

    @staticmethod
    def _peer(event: Any) -> tuple[str, str]:
        requestor = event.assoc.requestor
        return str(requestor.ae_title).strip(), str(requestor.address)

    def on_established(self, event: Any) -> None:
        """A new association: the calling AE title must be allowed from this host."""
        title, host = self._peer(event)
        if not self.callers.allowed(title, host):
            self.metrics.association("refused_caller")
            log.warning(
                "dicom_association_refused",
                calling_ae=title,
                peer=host,
                reason="calling AE title not allowed from this host",
            )
            event.assoc.abort()
            return
        self.metrics.association("accepted")
        with self._lock:
            self._stored[id(event.assoc)] = 0
        log.info(
            "dicom_association",
            calling_ae=title,
            called_ae=str(event.assoc.acceptor.ae_title).strip(),
            peer=host,
        )

    def on_ended(self, event: Any) -> None:
        """An association was released or aborted."""
        with self._lock:
            stored = self._stored.pop(id(event.assoc), None)
        if stored is None:
            return
        title, host = self._peer(event)
        outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info(
            "dicom_association_ended", calling_ae=title, peer=host, stored=stored, outcome=outcome
        )
        self.intake.released(id(event.assoc))

    def on_echo(self, event: Any) -> int:
        """C-ECHO: Success."""
        del event
        return SUCCESS

    # -- C-STORE: the one boundary -----------------------------------------------------------

    def on_store(self, event: Any) -> int:
        """Spool one instance and answer its status (see the module doc)."""
        start = time.perf_counter()
        status, failure, study = SUCCESS, None, ""
        try:
            study = self._store(event)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the one boundary: every exception becomes a status
            status, failure = store_status(exc), exc
        name = STATUS_NAMES[status]
        self.metrics.instance(name)
        if failure is None:
            with self._lock:
                key = id(event.assoc)
                if key in self._stored:
                    self._stored[key] += 1
            return status
        fields: dict[str, Any] = {
            "status": f"0x{status:04X}",
            "status_name": name,
            "study": study or None,
            "error": type(failure).__name__,
            "ms": round((time.perf_counter() - start) * 1000.0, 2),
        }
        if name == "processing_failure":
            fields["reason"] = "internal error (only the exception type is logged)"
        else:
            fields["reason"] = str(failure)  # our own messages: no patient data
        log.warning("dicom_store_refused", **fields)
        return status

    def _store(self, event: Any) -> str:
        """Check and spool the instance of ``event``; the hashed study UID."""
        if self._draining.is_set():
            raise SpoolFull("the service is shutting down; send the instance again later")
        request = event.request
        path = event.dataset_path
        size = path.stat().st_size
        if size > self.intake.spool.max_study_bytes:
            raise SpoolFull(
                f"the instance is {size} bytes, above dicom.max_study_bytes = "
                f"{self.intake.spool.max_study_bytes}"
            )
        data = path.read_bytes()
        d = self.decode
        header = read_header(
            data,
            0,
            d.max_pixels,
            max_aspect_ratio=d.max_aspect_ratio,
            max_inflated_bytes=d.max_inflated_bytes,
            max_compression_ratio=d.max_compression_ratio,
        )
        dataset_class = str(header.dataset.get("SOPClassUID", "")) if header.dataset else ""
        if dataset_class != str(request.AffectedSOPClassUID):
            raise NotAccepted("the data set's SOPClassUID differs from the C-STORE request's")
        if header.sop_instance_uid != str(request.AffectedSOPInstanceUID):
            raise NotAccepted("the data set's SOPInstanceUID differs from the C-STORE request's")
        if not header.study_instance_uid:
            raise NotAccepted("the data set has no StudyInstanceUID")
        title, host = self._peer(event)
        self.intake.accept(
            header.study_instance_uid,
            header.sop_instance_uid,
            data,
            id(event.assoc),
            StudyMeta(calling_ae_title=title, host=host),
        )
        return hash_uid(header.study_instance_uid)
