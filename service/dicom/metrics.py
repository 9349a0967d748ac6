"""Prometheus metrics of the DICOM front door and the outbox, in the server's registry.

Labels are fixed vocabularies: outcomes, status names, reasons, and destination names from the
configuration; never a UID, an AE title sent by a peer or a patient value.

- ``triage_dicom_associations_total{outcome}``: accepted, refused_host (connection closed at
  once), refused_caller (a known title from another host: aborted);
- ``triage_dicom_instances_total{status}``: C-STORE answers by status name
  (:data:`service.dicom.status.STATUS_NAMES`);
- ``triage_dicom_studies_total{outcome}``: complete studies by outcome (triaged, not_eligible,
  invalid, overloaded, failed, quarantined ... :data:`service.dicom.status.TRIAGE_OUTCOMES`);
- ``triage_dicom_not_eligible_total{reason}``: studies stored but not triaged, by reason
  (modality, body_part, view, photometric, no_pixel_data, other);
- ``triage_dicom_spool_bytes``, ``triage_dicom_spool_studies``: what the spool holds;
- ``triage_outbox_queued{destination}``, ``triage_outbox_sent{destination}``,
  ``triage_outbox_failed{destination}``: outbox rows by state (read from the store, so every
  replica reports the same);
- ``triage_outbox_oldest_age_seconds{destination}``: age of the oldest queued row (0: none);
- ``triage_outbox_attempts_total{destination, outcome}``: send attempts (sent, failed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.worklist.store import OutboxStats


class DicomMetrics:
    """The metrics above; no-ops when ``enabled`` is False."""

    def __init__(self, registry: CollectorRegistry, enabled: bool) -> None:
        self.enabled = enabled
        self.associations = Counter(
            "triage_dicom_associations", "DICOM associations by outcome", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.instances = Counter(
            "triage_dicom_instances", "C-STORE requests answered, by status", ["status"],
            registry=registry,
        )  # fmt: skip
        self.studies = Counter(
            "triage_dicom_studies", "Complete DICOM studies by outcome", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.not_eligible = Counter(
            "triage_dicom_not_eligible", "Studies stored but not triaged, by reason", ["reason"],
            registry=registry,
        )  # fmt: skip
        self.spool_bytes = Gauge(
            "triage_dicom_spool_bytes", "Bytes of spooled instances", registry=registry
        )
        self.spool_studies = Gauge(
            "triage_dicom_spool_studies", "Studies in the spool", registry=registry
        )
        self.queued = Gauge(
            "triage_outbox_queued", "Outbox rows waiting to be sent", ["destination"],
            registry=registry,
        )  # fmt: skip
        self.sent = Gauge(
            "triage_outbox_sent", "Outbox rows sent", ["destination"], registry=registry
        )
        self.failed = Gauge(
            "triage_outbox_failed", "Outbox rows given up on (FAILED)", ["destination"],
            registry=registry,
        )  # fmt: skip
        self.oldest = Gauge(
            "triage_outbox_oldest_age_seconds", "Age of the oldest queued outbox row",
            ["destination"], registry=registry,
        )  # fmt: skip
        self.attempts = Counter(
            "triage_outbox_attempts", "Send attempts by outcome", ["destination", "outcome"],
            registry=registry,
        )  # fmt: skip

    def association(self, outcome: str) -> None:
        """One association (or refused connection)."""
        if self.enabled:
            self.associations.labels(outcome=outcome).inc()

    def instance(self, status: str) -> None:
        """One C-STORE answered with ``status``."""
        if self.enabled:
            self.instances.labels(status=status).inc()

    def study(self, outcome: str, reason: str = "") -> None:
        """One complete study by outcome (and, when not eligible, its reason)."""
        if not self.enabled:
            return
        self.studies.labels(outcome=outcome).inc()
        if reason:
            self.not_eligible.labels(reason=reason).inc()

    def spool(self, total_bytes: int, studies: int) -> None:
        """What the spool holds now."""
        if self.enabled:
            self.spool_bytes.set(total_bytes)
            self.spool_studies.set(studies)

    def attempt(self, destination: str, ok: bool) -> None:
        """One send attempt of one object."""
        if self.enabled:
            self.attempts.labels(destination=destination, outcome="sent" if ok else "failed").inc()

    def outbox(self, stats: Mapping[str, OutboxStats], destinations: list[str]) -> None:
        """The outbox by destination, from the store."""
        if not self.enabled:
            return
        now = time.time()
        for name in destinations:
            s = stats.get(name, OutboxStats())
            self.queued.labels(destination=name).set(s.queued)
            self.sent.labels(destination=name).set(s.sent)
            self.failed.labels(destination=name).set(s.failed)
            age = 0.0 if s.oldest_queued is None else max(0.0, now - s.oldest_queued)
            self.oldest.labels(destination=name).set(age)
