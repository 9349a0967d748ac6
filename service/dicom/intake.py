"""From spooled instances to committed results: when a study is complete, and its triage.

A study is complete when no instance of it arrived for ``dicom.quiet_seconds``, or (with
``dicom.complete_on_release``) as soon as every association that carried it was released.
Complete studies go to ``dicom.triage_workers`` threads, which run them through the same
pipeline (:meth:`~service.pipeline.TriagePipeline.run`) and the same commit
(:func:`service.commit.commit_result`) as the gRPC servicer, with the DICOM objects the
destinations take (:mod:`service.dicom.outputs`), then delete the instances the study was
triaged from (instances that arrived meanwhile stay for the next round).

A failure is an outcome (:data:`service.dicom.status.TRIAGE_OUTCOMES`), counted and logged with
the hashed study UID: a study that is not an eligible frontal chest radiograph (a CT, a lateral)
was stored successfully and produces no result; a passing failure (overload, the model not
loaded yet) keeps the study and tries again after ``dicom.retry_seconds`` (while the model is
still loading nothing is scheduled at all); so does an unexpected
failure, at most ``dicom.max_failed_attempts`` times, after which the study's files move to the
spool's ``quarantine/`` folder (an acknowledged study is never deleted untriaged unless it is
not eligible or not decodable). At start-up every
study left in the spool (a crash before its result was committed) is due at once: a study
whose result was committed before the crash replays it (same decision inputs) and adds nothing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.commit import commit_result, explain_request, to_proto
from service.config import DicomConfig
from service.core.errors import NotEligible, NotReady
from service.dicom.metrics import DicomMetrics
from service.dicom.outputs import DICOM, DicomOutputs
from service.dicom.spool import Spool, StudyMeta
from service.dicom.status import FAILED, not_eligible_reason, triage_outcome
from service.pipeline import RequestOptions, RequestTrace, TriagePipeline
from service.worklist.store import WorklistStore
from triage_common.logging import get_logger, hash_uid

log = get_logger("service.dicom")

#: How often the scheduler looks for complete studies.
TICK_SECONDS = 0.1


@dataclass
class _Open:
    """A study being received (or waiting to be triaged again)."""

    key: str
    last: float  # time.monotonic() of the latest instance
    associations: set[int] = field(default_factory=set)
    released: bool = False  # every association that carried it ended
    not_before: float = 0.0  # retry time after a passing failure
    running: bool = False
    dirty: bool = False  # an instance arrived while it was being triaged
    attempts: int = 0
    failures: int = 0  # unexpected failures (quarantined at dicom.max_failed_attempts)


class Intake:
    """Spooled studies: completion, triage and commit (see the module doc)."""

    def __init__(
        self,
        config: DicomConfig,
        spool: Spool,
        pipeline: Callable[[], TriagePipeline | None],
        store: WorklistStore | None,
        outputs: DicomOutputs | None,
        metrics: DicomMetrics,
        *,
        request_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        explain_findings: int = 0,
    ) -> None:
        self._explain_findings = explain_findings  # 0: no counterfactual jobs (explain off)
        self.config = config
        self.spool = spool
        self._pipeline = pipeline
        self._store = store
        self._outputs = outputs
        self._metrics = metrics
        self._request_seconds = request_seconds
        self._clock = clock
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.idle = threading.Condition(self._lock)  # notified whenever a study finishes

    # -- receiving ---------------------------------------------------------------------------

    def accept(
        self, study_uid: str, sop_instance_uid: str, data: bytes, association: int, meta: StudyMeta
    ) -> None:
        """Spool one instance (SpoolFull past a bound) and note its arrival."""
        key = self.spool.add(study_uid, sop_instance_uid, data, meta)
        with self._lock:
            study = self._open.get(key)
            if study is None:
                study = self._open[key] = _Open(key, self._clock())
            study.last = self._clock()
            study.associations.add(association)
            study.released = False
            if study.running:
                study.dirty = True
        self._metrics.spool(self.spool.total_bytes, self.spool.study_count)

    def released(self, association: int) -> None:
        """An association ended (released or aborted)."""
        with self._lock:
            for study in self._open.values():
                if association in study.associations:
                    study.associations.discard(association)
                    if not study.associations:
                        study.released = True

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Every study left in the spool is due now; start the scheduler and the workers."""
        now = self._clock()
        recovered = self.spool.studies()
        with self._lock:
            for s in recovered:
                self._open.setdefault(s.key, _Open(s.key, now - self.config.quiet_seconds))
                self._open[s.key].released = True
        if recovered:
            log.info("dicom_spool_recovered", studies=len(recovered))
        self._metrics.spool(self.spool.total_bytes, self.spool.study_count)
        self._threads = [threading.Thread(target=self._schedule, name="dicom-scheduler")]
        self._threads += [
            threading.Thread(target=self._worker, name=f"dicom-triage-{i}")
            for i in range(self.config.triage_workers)
        ]
        for t in self._threads:
            t.daemon = True
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling; let running triages finish (within ``timeout``)."""
        self._stop.set()
        for _ in range(self.config.triage_workers):
            self._work.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def wait_idle(self, timeout: float) -> bool:
        """Block until no study is open (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._open:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.idle.wait(min(remaining, 0.1))
        return True

    @property
    def open_studies(self) -> int:
        """Studies received or spooled and not yet done with."""
        with self._lock:
            return len(self._open)

    # -- scheduling --------------------------------------------------------------------------

    def _due(self, study: _Open, now: float) -> bool:
        if study.running or now < study.not_before:
            return False
        quiet = now - study.last >= self.config.quiet_seconds
        return quiet or (self.config.complete_on_release and study.released)

    def _schedule(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            if self._pipeline() is None:  # the model is still loading: nothing can run yet
                continue
            now = self._clock()
            with self._lock:
                due = [s for s in self._open.values() if self._due(s, now)]
                for s in due:
                    s.running, s.dirty = True, False
            for s in due:
                self._work.put(s.key)

    def _worker(self) -> None:
        while True:
            key = self._work.get()
            if key is None or self._stop.is_set():
                return
            try:
                self._triage(key)
            except Exception as exc:  # never kill the worker; the study is retried
                log.error("dicom_triage_crashed", error=type(exc).__name__)
                self._finish(key, done=False, retry=True)

    def _failed_attempts(self, key: str) -> int:
        """Unexpected failures of the study so far, this one included."""
        with self._lock:
            study = self._open.get(key)
            if study is None:
                return 1
            study.failures += 1
            return study.failures

    def _finish(self, key: str, *, done: bool, retry: bool) -> None:
        with self._lock:
            study = self._open.get(key)
            if study is None:
                return
            study.running = False
            if done and not study.dirty and not self.spool.instances(key):
                del self._open[key]
            elif retry:
                study.attempts += 1
                study.not_before = self._clock() + self.config.retry_seconds
            self.idle.notify_all()
        self._metrics.spool(self.spool.total_bytes, self.spool.study_count)

    # -- triage ------------------------------------------------------------------------------

    def _triage(self, key: str) -> None:
        files = self.spool.instances(key)
        if not files:
            self._finish(key, done=True, retry=False)
            return
        spooled = self.spool.study(key)
        start = time.perf_counter()
        trace = RequestTrace()
        fields: dict[str, Any] = {"instances": len(files)}
        try:
            pipeline = self._pipeline()
            if pipeline is None:
                raise NotReady("the model is not loaded yet")
            result = self._run(pipeline, files, spooled.meta, trace)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the outcome table decides (no status: already stored)
            outcome = triage_outcome(exc)
            reason = not_eligible_reason(str(exc)) if isinstance(exc, NotEligible) else ""
            fields.update(outcome=outcome.label, error=type(exc).__name__)
            if outcome.label != "failed":
                fields["reason"] = str(exc)  # our own messages: no patient data
            if reason:
                fields["not_eligible"] = reason
            self._metrics.study(outcome.label, reason)
            self._log(key, trace, start, fields, warn=outcome.label == "failed")
            if outcome is FAILED and self._failed_attempts(key) >= self.config.max_failed_attempts:
                folder = self.spool.quarantine(key)
                self._metrics.study("quarantined")
                log.error(
                    "dicom_study_quarantined",
                    study=key[: len(hash_uid(""))],
                    attempts=self.config.max_failed_attempts,
                    error=type(exc).__name__,
                    folder=folder.name,
                )
                self._finish(key, done=True, retry=False)
            elif outcome.retry:
                self._finish(key, done=False, retry=True)
            else:
                self.spool.remove(key, files)
                self._finish(key, done=True, retry=False)
            return
        fields.update(outcome=result)
        self._metrics.study("triaged")
        self.spool.remove(key, files)
        self._log(key, trace, start, fields, warn=False)
        self._finish(key, done=True, retry=False)

    def _run(
        self, pipeline: TriagePipeline, files: list[Path], meta: StudyMeta, trace: RequestTrace
    ) -> str:
        """Triage and commit one study; the commit outcome (NEW, REPLAYED, ...)."""
        instances = [p.read_bytes() for p in files]
        outputs = self._outputs
        options = RequestOptions(
            include_overlay=outputs is not None and outputs.needs_overlay(DICOM, False),
            calling_ae_title=meta.calling_ae_title,
            deadline=time.monotonic() + self._request_seconds,
            is_active=lambda: not self._stop.is_set(),
        )
        result = pipeline.run(instances, options, trace)
        pending = outputs.pending(result, instances, DICOM, False) if outputs else None
        reply = to_proto(result)
        for finding in reply.findings:  # built for the overlays; not part of the result
            finding.overlay_png = b""
        caller = f"dicom:{meta.host or 'unknown'}"
        if meta.calling_ae_title:
            caller += f" ae:{meta.calling_ae_title}"
        explain = None
        if self._explain_findings and self._store is not None:
            header, destinations = pending.explanation_route() if pending else (b"", ())
            explain = explain_request(result, self._explain_findings, header, destinations)
        committed = commit_result(
            self._store,
            result,
            reply,
            caller=caller,
            cost_from_request=False,
            objects=pending.for_store if pending is not None and pending.routed else None,
            explain=explain,
        )
        if committed.replayed:
            trace.notes = (*trace.notes, "replayed stored result")
        return committed.outcome or "NOT_STORED"

    def _log(
        self, key: str, trace: RequestTrace, start: float, fields: dict[str, Any], warn: bool
    ) -> None:
        fields.update(
            study=trace.study_hash or key[: len(hash_uid(""))],  # the spool key is its sha256
            decision=trace.decision or None,
            reasons=list(trace.reasons),
            p_error=None if trace.p_error is None else round(trace.p_error, 6),
            ms=round((time.perf_counter() - start) * 1000.0, 2),
        )
        if trace.notes:
            fields["notes"] = list(trace.notes)
        (log.warning if warn else log.info)("dicom_study", **fields)
