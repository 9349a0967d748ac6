"""The explainer worker: makes the counterfactual jobs the service queues with deferred results.

A loop over the worklist store (SQLite file or PostgreSQL, the service's own database): lease
one PENDING job of this worker's bundle (:meth:`WorklistStore.claim_explanations`), explain its
findings (:class:`explainer.core.Explainer`), draw each as a GIF and a PNG strip
(:mod:`explainer.render`) and store the ``triage.v1.Explanation`` message; where the job names
destinations, the strips also go back to the study as one Secondary Capture, queued in the
outbox in the same transaction (the service's sender delivers it, retried and durable).

It runs in its own process, off the request path: the service never waits for it, and
triage is the same with or without it. A job that raises is recorded as a failed attempt
(PENDING again, FAILED after ``max_attempts``); a worker killed mid-job leaves its lease, which
expires, and the job is tried again (and given up after ``max_attempts`` claims). Nothing here
writes the items: a crash leaves the worklist as it was.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explainer.core import METHOD, Explainer, ExplainerMismatch, FindingExplanation
from explainer.render import gif_bytes, stacked, strip_image, strip_png, summary_line
from service._proto.triage.v1 import triage_pb2, worklist_pb2
from service.dicom.objects import encode, quiet_highdicom
from service.dicom.sc import build_counterfactual
from service.dicom.source import header_from_bytes, writer_view
from service.worklist.explanations import ExplanationJob
from service.worklist.store import NewObject, WorklistStore
from triage_common.atomic import atomic_write_bytes
from triage_common.labels import file_stem
from triage_common.logging import get_logger, hash_uid

log = get_logger(__name__)


def default_owner() -> str:
    """``explainer@HOST:PID``: who holds a lease (one name per worker process)."""
    return f"explainer@{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class WorkerOptions:
    """How the worker leases and retries jobs."""

    owner: str = field(default_factory=default_owner)
    lease_seconds: float = 300.0  # a job not finished by then may be taken by another worker
    max_attempts: int = 3  # claims of one job before it is given up (FAILED)
    poll_seconds: float = 2.0  # wait between empty claims
    sc_transfer_syntax: str = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
    out_dir: Path | None = None  # also write <item>/<label>.gif|.png here (inspection, demo)


def explanation_message(
    job: ExplanationJob, findings: list[FindingExplanation], explainer: str
) -> worklist_pb2.Explanation:
    """The stored ``triage.v1.Explanation`` of one job (images included)."""
    return worklist_pb2.Explanation(
        item_id=job.item_id,
        study_instance_uid=job.study_uid,
        state=worklist_pb2.EXPLANATION_DONE,
        model_version=job.bundle_id,
        explainer=explainer,
        method=METHOD,
        attempts=job.attempts,
        counterfactuals=[
            worklist_pb2.Counterfactual(
                label=f.label,
                probability=f.probability,
                lambdas=f.lambdas.tolist(),
                predictions=f.predictions.tolist(),
                lambda_reached=f.lambda_reached,
                prediction_drop=f.prediction_drop,
                stop_rule=f.stop_rule.value,
                image_change=f.image_change,
                attribution=triage_pb2.Heatmap(
                    height=int(f.attribution.shape[0]),
                    width=int(f.attribution.shape[1]),
                    values=f.attribution.ravel().tolist(),
                ),
                gif=gif_bytes(f),
                strip_png=strip_png(f),
                seconds=f.seconds,
            )
            for f in findings
        ],
    )


class ExplainWorker:
    """Takes jobs of one explainer's bundle from ``store`` and stores their explanations."""

    def __init__(
        self,
        store: WorklistStore,
        explainer: Explainer,
        options: WorkerOptions | None = None,
        *,
        after_explain: Callable[[ExplanationJob], None] | None = None,
    ) -> None:
        quiet_highdicom()
        self.store = store
        self.explainer = explainer
        self.options = options or WorkerOptions()
        self._after_explain = after_explain  # tests: what happens between explaining and storing
        self.done = 0
        self.failed = 0

    def run_once(self) -> bool:
        """Lease and process one job; False when none was due."""
        o = self.options
        jobs = self.store.claim_explanations(
            o.owner,
            [self.explainer.bundle_id],
            limit=1,
            lease_s=o.lease_seconds,
            max_attempts=o.max_attempts,
        )
        for job in jobs:
            self.process(job)
        return bool(jobs)

    def run(self, stop: threading.Event, max_jobs: int | None = None, drain: bool = False) -> int:
        """Process jobs until ``stop`` is set (or ``max_jobs`` were taken, or with ``drain``
        none is due); the number taken."""
        taken = 0
        while not stop.is_set() and (max_jobs is None or taken < max_jobs):
            if self.run_once():
                taken += 1
            elif drain:
                break
            else:
                stop.wait(self.options.poll_seconds)
        return taken

    def process(self, job: ExplanationJob) -> None:
        """Explain one leased job and store the outcome (see the module doc)."""
        start = time.perf_counter()
        study = hash_uid(job.study_uid)
        try:
            image = np.frombuffer(job.model_input, dtype=np.float32).reshape(1, job.size, job.size)
            findings = self.explainer.explain(image, job.labels)
            message = explanation_message(job, findings, self.explainer.explainer_id)
            objects = self._secondary_capture(job, findings, message)
            if self._after_explain is not None:
                self._after_explain(job)
        except Exception as exc:  # one job's failure is recorded; the worker goes on
            # our own messages name no patient data; other libraries' might: type only
            reason = str(exc) if isinstance(exc, ExplainerMismatch) else ""
            error = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            self.store.explanation_failed(
                job.explanation_id, self.options.owner, error, self.options.max_attempts
            )
            self.failed += 1
            log.warning(
                "explanation_failed",
                job=job.explanation_id,
                study=study,
                attempt=job.attempts,
                error=error,
            )
            return
        stored = self.store.explanation_done(
            job.explanation_id,
            self.options.owner,
            message.SerializeToString(),
            self.explainer.explainer_id,
            objects,
        )
        if stored:
            self.done += 1
            self._write_files(job, message)
        log.info(
            "explanation_done" if stored else "explanation_lease_lost",
            job=job.explanation_id,
            study=study,
            findings=[f.label for f in findings],
            drops=[round(f.prediction_drop, 4) for f in findings],
            stop_rules=[f.stop_rule.value for f in findings],
            secondary_capture=bool(objects),
            ms=round((time.perf_counter() - start) * 1000.0, 1),
        )

    def _secondary_capture(
        self,
        job: ExplanationJob,
        findings: list[FindingExplanation],
        message: worklist_pb2.Explanation,
    ) -> list[NewObject]:
        if not job.destinations or not job.source_header:
            return []
        source = writer_view(header_from_bytes(job.source_header))  # as the server's writers
        sc = build_counterfactual(
            source,
            stacked([strip_image(f) for f in findings]),
            model_version=job.bundle_id,
            explainer=self.explainer.explainer_id,
            description="; ".join(summary_line(f) for f in findings),
            transfer_syntax=self.options.sc_transfer_syntax,
        )
        obj = encode("SC", sc)
        message.sop_instance_uid = obj.sop_instance_uid
        return [
            NewObject(
                kind=obj.kind,
                sop_class_uid=obj.sop_class_uid,
                sop_instance_uid=obj.sop_instance_uid,
                transfer_syntax_uid=obj.transfer_syntax_uid,
                data=obj.data,
                destinations=job.destinations,
            )
        ]

    def _write_files(self, job: ExplanationJob, message: worklist_pb2.Explanation) -> None:
        out = self.options.out_dir
        if out is None:
            return
        folder = out / job.item_id
        folder.mkdir(parents=True, exist_ok=True)
        for cf in message.counterfactuals:
            name = file_stem(cf.label)
            atomic_write_bytes(folder / f"{name}.gif", cf.gif)
            atomic_write_bytes(folder / f"{name}.png", cf.strip_png)
