"""The DICOM side of ``triage serve``, assembled: outputs, spool, intake, SCP and sender.

:func:`dicom_outputs` builds the result writers and the destinations (both front doors use
them); :class:`DicomService` holds the Storage SCP with its spool and intake (when
``dicom.port`` is set) and the outbox sender (when destinations are configured), started and
stopped with the gRPC server (:mod:`service.rpc.server`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from service.config import ConfigError, ServiceConfig
from service.dicom.codes import TABLE, check_labels
from service.dicom.destinations import parse_destinations
from service.dicom.intake import Intake
from service.dicom.metrics import DicomMetrics
from service.dicom.objects import Writer, WriterSettings
from service.dicom.outputs import DicomOutputs
from service.dicom.scp import StorageSCP
from service.dicom.sender import Sender
from service.dicom.spool import Spool
from service.pipeline import TriagePipeline
from service.worklist.store import WorklistStore
from triage_common.logging import get_logger

log = get_logger("service.dicom")


def dicom_outputs(config: ServiceConfig, labels: Sequence[str]) -> DicomOutputs | None:
    """The writers and destinations; None when the bundle has a label without a code (a
    ConfigError then if the DICOM front door or a destination is configured)."""
    d = config.dicom
    destinations = parse_destinations(d.destinations)
    missing = check_labels(labels)
    if missing:
        if d.enabled or destinations:
            raise ConfigError(
                f"invalid configuration:\n  dicom: the bundle's label(s) {missing} have no code "
                f"in {TABLE.name}; add them there to write DICOM results"
            )
        log.warning("dicom_objects_unavailable", labels=missing, table=TABLE.name)
        return None
    settings = WriterSettings(d.sc_transfer_syntax, d.seg_transfer_syntax)
    return DicomOutputs(Writer(settings), destinations)


class DicomService:
    """The Storage SCP, its intake and the sender of one server."""

    def __init__(
        self,
        config: ServiceConfig,
        outputs: DicomOutputs | None,
        store: WorklistStore | None,
        pipeline: Callable[[], TriagePipeline | None],
        metrics: DicomMetrics,
    ) -> None:
        d = config.dicom
        if (d.enabled or (outputs and outputs.destinations)) and store is None:
            raise ConfigError(
                "invalid configuration:\n  worklist.path: the DICOM front door and its "
                "destinations need the worklist store (results and the outbox live there)"
            )
        self.metrics = metrics
        self.intake: Intake | None = None
        self.scp: StorageSCP | None = None
        self.sender: Sender | None = None
        if d.enabled:
            spool = Spool(
                Path(d.spool_dir),
                max_study_bytes=d.max_study_bytes,
                max_study_instances=d.max_study_instances,
                max_total_bytes=d.max_spool_bytes,
            )
            self.intake = Intake(
                d,
                spool,
                pipeline,
                store,
                outputs,
                metrics,
                request_seconds=config.server.max_request_seconds,
                explain_findings=config.explain.max_findings if config.explain.enabled else 0,
            )
            self.scp = StorageSCP(d, config.decode, self.intake, metrics)
        if outputs is not None and outputs.destinations and store is not None:
            self.sender = Sender(store, outputs.destinations, d, metrics)

    @property
    def port(self) -> int:
        """The SCP's port (0: not running)."""
        return self.scp.port if self.scp is not None else 0

    def start(self) -> None:
        """Listen, triage what the spool holds, send what the outbox holds."""
        if self.scp is not None and self.intake is not None:
            self.scp.start()
            self.intake.start()
        if self.sender is not None:
            self.sender.start()

    def drain(self) -> None:
        """Refuse new associations and instances."""
        if self.scp is not None:
            self.scp.drain()

    def stop(self, grace: float) -> None:
        """Let running triages finish (within ``grace``), then stop the sender."""
        if self.intake is not None:
            self.intake.stop(grace)
        if self.sender is not None:
            self.sender.stop()
