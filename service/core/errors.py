"""The service's exceptions: a leaf module (no gRPC, no database, no stage imports).

Every stage raises one of these (or lets a library exception escape, which the boundary reports
as INTERNAL without its text). Which gRPC status each becomes is data kept at the boundary, in
:mod:`service.rpc.status`; nothing else maps exceptions to statuses.

Messages of these exceptions are written by this package and never contain patient data: they
name attributes (modality, body part, view, sizes, tags) but not patient names, IDs, birth
dates or accession numbers; study UIDs appear only through ``hash_uid``.
"""

from __future__ import annotations


class TriageError(Exception):
    """Base class: a request failed for a reason the client should be told."""


class InvalidStudy(TriageError):
    """The request does not carry decodable DICOM of one study."""


class DecoderFailed(InvalidStudy):
    """A codec failed on the data in a way it should not (a native panic): the data is
    malformed, and the process that ran the codec is replaced."""


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


class WorklistError(ValueError):
    """A worklist operation that cannot be done (unknown item, wrong state, not the holder)."""


class NotFound(WorklistError):
    """No such item, or no item to claim."""


class Conflict(WorklistError):
    """The item is not in a state that allows the operation."""
