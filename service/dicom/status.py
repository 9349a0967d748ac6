"""The one table that maps exceptions to C-STORE response statuses, and the triage outcomes.

:func:`store_status` is consulted at exactly one boundary, the C-STORE handler of the Storage
SCP (:meth:`service.dicom.scp.StorageSCP.on_store`); an instance is acknowledged Success only
once it is on disk (spooled and fsync'd).

======================  ========  ==============================  ===========================
exception               status    name                            when
======================  ========  ==============================  ===========================
(none)                  0x0000    Success                         the instance is spooled
SpoolFull               0xA700    Refused: Out of Resources       the spool, the study's bytes
                                                                  or instance count is full
TooLarge                0xA700    Refused: Out of Resources       the instance declares more
                                                                  pixels than decode.max_pixels
NotAccepted             0xA900    Error: Data Set does not match  the data set's SOP class or
                                  SOP Class                       instance UID differs from
                                                                  the request, or it has no
                                                                  StudyInstanceUID
InvalidStudy            0xC000    Error: Cannot understand        bytes that do not parse as
                                                                  DICOM
OSError                 0xA700    Refused: Out of Resources       the spool cannot be written
(anything else)         0x0110    Processing failure              a bug; logged with its type
======================  ========  ==============================  ===========================

After Success the study belongs to the service: triage-time failures are outcomes, not
statuses (:data:`TRIAGE_OUTCOMES`): counted and logged (hashed study UID), and the study is
either done with (no AI result) or kept in the spool and tried again.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.errors import (
    Cancelled,
    DeadlineExceeded,
    InferenceFailed,
    InvalidStudy,
    NotEligible,
    NotReady,
    Overloaded,
    TooLarge,
    TriageError,
)


class SpoolFull(TriageError):
    """The spool (or the study's share of it) has no room for the instance."""


class NotAccepted(InvalidStudy):
    """The data set does not match the C-STORE request, or lacks what a study needs."""


SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

#: Status names for logs and metric labels.
STATUS_NAMES = {
    SUCCESS: "success",
    OUT_OF_RESOURCES: "out_of_resources",
    DOES_NOT_MATCH: "does_not_match_sop_class",
    CANNOT_UNDERSTAND: "cannot_understand",
    PROCESSING_FAILURE: "processing_failure",
}

#: The status table (data): the first entry whose class matches wins.
STORE_STATUS_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (SpoolFull, OUT_OF_RESOURCES),
    (TooLarge, OUT_OF_RESOURCES),
    (NotAccepted, DOES_NOT_MATCH),
    (InvalidStudy, CANNOT_UNDERSTAND),
    (OSError, OUT_OF_RESOURCES),
)


def store_status(exc: BaseException) -> int:
    """The C-STORE status for ``exc``."""
    for kind, status in STORE_STATUS_TABLE:
        if isinstance(exc, kind):
            return status
    return PROCESSING_FAILURE


@dataclass(frozen=True)
class Outcome:
    """What becomes of a spooled study whose triage raised an exception."""

    label: str  # metric label and log value
    retry: bool  # keep the study in the spool and try again later


#: Triage-time outcomes (data): the first entry whose class matches wins.
TRIAGE_OUTCOMES: tuple[tuple[type[BaseException], Outcome], ...] = (
    (NotEligible, Outcome("not_eligible", retry=False)),
    (Overloaded, Outcome("overloaded", retry=True)),
    (NotReady, Outcome("not_ready", retry=True)),
    (DeadlineExceeded, Outcome("deadline_exceeded", retry=True)),
    (Cancelled, Outcome("cancelled", retry=True)),  # the server is stopping: next start
    (InferenceFailed, Outcome("inference_failed", retry=True)),
    (TooLarge, Outcome("too_large", retry=False)),
    (InvalidStudy, Outcome("invalid", retry=False)),
    (OSError, Outcome("storage_error", retry=True)),
)
#: An unexpected exception (a bug, a corrupt spool file): the study was acknowledged, so it is
#: kept and tried again, at most ``dicom.max_failed_attempts`` times, then quarantined.
FAILED = Outcome("failed", retry=True)


def triage_outcome(exc: BaseException) -> Outcome:
    """The outcome of a study whose triage raised ``exc``."""
    for kind, outcome in TRIAGE_OUTCOMES:
        if isinstance(exc, kind):
            return outcome
    return FAILED


#: Words of a NotEligible message -> the reason label counted (a fixed vocabulary).
NOT_ELIGIBLE_REASONS = (
    ("modality", "modality"),
    ("body part", "body_part"),
    ("bodypartexamined", "body_part"),
    ("lateral", "view"),
    ("view", "view"),
    ("photometric", "photometric"),
    ("samples", "photometric"),
    ("pixel data", "no_pixel_data"),
)


def not_eligible_reason(message: str) -> str:
    """The reason label of a NotEligible message (``modality``, ``view``... ``other``)."""
    text = message.lower()
    return next((label for word, label in NOT_ELIGIBLE_REASONS if word in text), "other")
