"""The service's request errors and the one table that maps them to gRPC status codes.

Every stage raises one of the exceptions below (or lets a library exception escape, which the
boundary reports as INTERNAL without its text). :func:`status_for` is consulted at exactly one
place, the gRPC servicer, so the mapping is data rather than scattered ``context.abort`` calls.

Messages of these exceptions are written by this package and never contain patient data: they
name attributes (modality, body part, view, sizes, tags) but not patient names, IDs, birth
dates or accession numbers; study UIDs appear only through ``hash_uid``.

==========================  =====================  ==========================================
exception                   gRPC status            when
==========================  =====================  ==========================================
InvalidStudy                INVALID_ARGUMENT       bytes that are not decodable DICOM, a
                                                   truncated file, no pixel data, mixed
                                                   StudyInstanceUIDs, malformed chunk stream
PolicyOutOfBounds           INVALID_ARGUMENT       a defer-cost override outside the bounds
TooLarge                    INVALID_ARGUMENT       study, instance count or decoded pixels
                                                   above the configured limits
NotEligible                 FAILED_PRECONDITION    decodable DICOM but no frontal chest CR/DX
Overloaded                  RESOURCE_EXHAUSTED     in-flight or queue limit reached
DeadlineExceeded            DEADLINE_EXCEEDED      the client's deadline ran out in a stage
Cancelled                   CANCELLED              the client went away
NotReady                    UNAVAILABLE            the model is not loaded or is shutting down
InferenceFailed             INTERNAL               the runtime failed on a batch
worklist NotFound           NOT_FOUND              no such item, or nothing to claim
worklist Conflict           FAILED_PRECONDITION    the item's state or holder forbids it
WorklistError               INVALID_ARGUMENT       a malformed worklist request
(anything else)             INTERNAL               a bug; logged with its type only
==========================  =====================  ==========================================
"""

from __future__ import annotations

import grpc

from service.worklist.store import Conflict, NotFound, WorklistError


class TriageError(Exception):
    """Base class: a request failed for a reason the client should be told."""


class InvalidStudy(TriageError):
    """The request does not carry decodable DICOM of one study."""


class TooLarge(TriageError):
    """The request exceeds a configured size limit."""


class PolicyOutOfBounds(TriageError):
    """A per-request defer-cost override outside the configured bounds."""


class NotEligible(TriageError):
    """Decodable DICOM, but no image of the study is a frontal chest radiograph."""


class Overloaded(TriageError):
    """Too much work in flight: the client should back off and retry."""


class DeadlineExceeded(TriageError):
    """The request's deadline ran out before the result was ready."""


class Cancelled(TriageError):
    """The client cancelled the call."""


class NotReady(TriageError):
    """The service cannot take requests (not warmed up, or draining for shutdown)."""


class InferenceFailed(TriageError):
    """The inference runtime failed."""


#: The status table (data): the first entry whose class matches wins.
STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidStudy, grpc.StatusCode.INVALID_ARGUMENT),
    (TooLarge, grpc.StatusCode.INVALID_ARGUMENT),
    (PolicyOutOfBounds, grpc.StatusCode.INVALID_ARGUMENT),
    (NotEligible, grpc.StatusCode.FAILED_PRECONDITION),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (InferenceFailed, grpc.StatusCode.INTERNAL),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (WorklistError, grpc.StatusCode.INVALID_ARGUMENT),
)

#: What the client is told for an exception outside the table (its text may hold anything).
INTERNAL_MESSAGE = "internal error while triaging the study"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and client-facing message for ``exc``."""
    for kind, code in STATUS_TABLE:
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def status_label(code: grpc.StatusCode) -> str:
    """The status name used in logs and metric labels (``OK``, ``INVALID_ARGUMENT``...)."""
    return str(code.name)
