"""The one table that maps the service's exceptions to gRPC status codes.

:func:`status_for` is consulted at exactly one boundary, the gRPC servicers (``Triage`` and
``Worklist``), so the mapping is data rather than scattered ``context.abort`` calls.

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

from service.core.errors import (
    Cancelled,
    Conflict,
    DeadlineExceeded,
    InferenceFailed,
    InvalidStudy,
    NotEligible,
    NotFound,
    NotReady,
    Overloaded,
    PolicyOutOfBounds,
    TooLarge,
    WorklistError,
)

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
