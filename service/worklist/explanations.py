"""Counterfactual explanation jobs: the plain values the worklist stores for the explainer.

A deferred result may come with an :class:`ExplainRequest` (``explain.enabled``): the model
input the classifier read (float32, ``(1, S, S)``, the bundle's canonical preprocessing), the
findings to explain and, where a destination takes Secondary Captures, the header of the image
read and those destinations. The store writes it in the result's own transaction, as one
``explanations`` row in state PENDING (a result acknowledged is a job that exists, even after a
crash). The explainer worker (``triage explain-worker``, a separate process with the train
extra) takes PENDING rows with a lease (:class:`ExplanationJob`), and either stores the
explanation (DONE, the serialized ``triage.v1.Explanation`` message, with any DICOM objects it
made written to the outbox in the same transaction) or records the failure; a job is given up
(FAILED) after ``max_attempts`` claims, so a worker that dies on one input (killed, out of
memory) cannot take the queue down with it. The model input and header are dropped once the job
is DONE or FAILED. Nothing here touches the items: the worklist is the same with or without the
explainer.

The rows are patient-data grade (the header holds the patient module); nothing here logs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Explanation row states.
EXPLAIN_PENDING, EXPLAIN_DONE, EXPLAIN_FAILED = "PENDING", "DONE", "FAILED"
EXPLAIN_STATES = (EXPLAIN_PENDING, EXPLAIN_DONE, EXPLAIN_FAILED)


@dataclass(frozen=True)
class ExplainRequest:
    """What the explainer needs for one deferred result (written with the result)."""

    model_input: bytes = field(repr=False)  # float32, C order, (1, size, size)
    size: int
    labels: tuple[str, ...]  # the findings to explain, most probable first
    source_header: bytes = field(default=b"", repr=False)  # Part-10 header, no pixels
    destinations: tuple[str, ...] = ()  # where the strip goes as a Secondary Capture

    def __post_init__(self) -> None:
        if len(self.model_input) != 4 * self.size * self.size:
            raise ValueError(
                f"the model input has {len(self.model_input)} bytes, not 4 x {self.size}^2"
            )
        if not self.labels:
            raise ValueError("an explanation request names at least one finding")


@dataclass(frozen=True)
class ExplanationJob:
    """A PENDING job leased to a worker (:meth:`WorklistStore.claim_explanations`)."""

    explanation_id: int
    result_id: int
    item_id: str
    study_uid: str
    bundle_id: str
    labels: tuple[str, ...]
    size: int
    attempts: int  # claims so far, this one included
    model_input: bytes = field(repr=False)
    source_header: bytes = field(default=b"", repr=False)
    destinations: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredExplanation:
    """An item's explanation row as stored (``payload``: a ``triage.v1.Explanation``)."""

    explanation_id: int
    result_id: int
    item_id: str
    study_uid: str
    bundle_id: str
    state: str
    labels: tuple[str, ...]
    attempts: int
    last_error: str
    explainer: str  # the worker's model identity (autoencoder id), once DONE
    created: float
    updated: float
    payload: bytes = field(default=b"", repr=False)
