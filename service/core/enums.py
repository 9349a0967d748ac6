"""The closed vocabularies of a triage result: decision, defer reason, reading priority.

Leaf module (standard library only). Names and numbers equal those of the gRPC enums of the
same names in ``protos/triage/v1/triage.proto`` (a test checks it); the gRPC boundary converts
by name, and nothing between the stages handles these as strings.
"""

from __future__ import annotations

from enum import IntEnum


class Decision(IntEnum):
    """What the service does with a study."""

    AUTO_REPORT = 1  # the labels are reported without a radiologist's read
    DEFER = 2  # a radiologist reads the study


class DeferReason(IntEnum):
    """Why a study was deferred."""

    P_ERROR_ABOVE_COST = 1  # the error model's P(error) exceeds the defer cost
    OUT_OF_DISTRIBUTION = 2  # the OOD guard flagged the image


class Priority(IntEnum):
    """Reading priority of a worklist item (higher is more urgent)."""

    ROUTINE = 1
    URGENT = 2
    STAT = 3

    @property
    def ups(self) -> str:
        """DICOM UPS Scheduled Procedure Step Priority."""
        return {Priority.ROUTINE: "LOW", Priority.URGENT: "MEDIUM", Priority.STAT: "HIGH"}[self]

    @property
    def fhir(self) -> str:
        """FHIR Task.priority code."""
        return self.name.lower()
