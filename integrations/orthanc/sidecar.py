"""The sidecar: follow Orthanc's ``/changes`` feed and triage every stable chest study once.

For each ``StableStudy`` change the study is queued (durably, before the change sequence is
advanced past it). A worker then:

1. skips it when Orthanc already holds its ``triage-status`` (done before a lost state);
2. unless a result is saved from an earlier attempt, selects the study's frontal CR/DX images
   (series Modality CR/DX, a radiograph Storage SOP class, ViewPosition not lateral), sends them
   to ``triage serve`` over ``TriageStream`` with ``include_dicom_objects`` and saves the
   reply's SR/SC/SEG and summary in the state folder (the commit point);
3. posts the saved objects to ``POST /instances`` (same SOP Instance UIDs on every attempt, so
   a repeat after a crash is Orthanc's ``AlreadyStored``, never a second copy), writes the
   study metadata (decision, priority, worklist, item, reasons, result) and ``triage-status``
   last, and drops the saved result.

A study the server cannot triage for a passing reason (server down or restarting, overloaded,
a deadline, Orthanc unreachable) stays queued and is retried with exponential backoff; one the
server refuses for good (``FAILED_PRECONDITION``: not a frontal chest radiograph;
``INVALID_ARGUMENT``: bad DICOM) is recorded as ``not-eligible``/``rejected`` and not retried.
Log lines name studies by :func:`~triage_common.logging.hash_uid` of the StudyInstanceUID (the
same token as the server's log lines) and the Orthanc id; never a header value.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from integrations.orthanc import metadata as md
from integrations.orthanc.rest import OrthancClient, OrthancError
from integrations.orthanc.state import (
    DONE,
    GONE,
    NOT_ELIGIBLE,
    PENDING,
    POSTING,
    REJECTED,
    SavedObject,
    SavedResult,
    StateDir,
    StudyState,
)
from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc
from triage_common.logging import get_logger, hash_uid
from triage_tools.client import call_metadata, chunks

log = get_logger("integrations.orthanc")

#: Radiograph Storage SOP classes: CR, DX for presentation, DX for processing.
RADIOGRAPH_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1"}
)
MODALITIES = frozenset({"CR", "DX"})
#: ViewPosition values of lateral projections (as the server's eligibility stage reads them).
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
#: gRPC codes that end a study's triage for good; every other failure is retried.
FINAL_CODES = {
    grpc.StatusCode.FAILED_PRECONDITION: NOT_ELIGIBLE,
    grpc.StatusCode.INVALID_ARGUMENT: REJECTED,
}


@dataclass(frozen=True)
class FollowOptions:
    """How the sidecar follows and retries."""

    workers: int = 2
    poll_seconds: float = 1.0
    page_size: int = 100
    retry_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    call_timeout: float = 120.0
    token: str | None = None
    calling_ae_title: str = ""
    start: str = "now"  # first start without state: "now" (new studies only) or "beginning"


class Retry(Exception):
    """A passing failure: try the study again after the backoff."""


def _with_dicom_objects(
    stream: Iterator[triage_pb2.StudyChunk],
) -> Iterator[triage_pb2.StudyChunk]:
    first = True
    for chunk in stream:
        if first:
            chunk.include_dicom_objects = True
            first = False
        yield chunk


def summary_of(result: triage_pb2.TriageResult) -> dict[str, Any]:
    """What is recorded on the study from a result (no header value of the images)."""
    return {
        "study_instance_uid": result.study_instance_uid,
        "decision": triage_pb2.Decision.Name(result.decision),
        "priority": triage_pb2.Priority.Name(result.priority),
        "worklist": result.worklist,
        "worklist_item_id": result.worklist_item_id,
        "defer_reasons": [triage_pb2.DeferReason.Name(r) for r in result.defer_reasons],
        "p_error": result.p_error,
        "model_version": result.model_version,
        "policy_version": result.policy_version,
        "replayed": result.replayed,
        "findings": [
            {"label": f.label, "probability": f.probability, "present": f.present}
            for f in result.findings
        ],
    }


class Sidecar:
    """Follows one Orthanc and triages with one triage server."""

    def __init__(
        self,
        orthanc: OrthancClient,
        stub: triage_pb2_grpc.TriageStub,
        state: StateDir,
        options: FollowOptions,
    ) -> None:
        self.orthanc = orthanc
        self.stub = stub
        self.state = state
        self.options = options
        self._open: dict[str, StudyState] = state.open_studies()
        self._next_at: dict[str, float] = {}
        self._in_flight: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._since: int | None = state.since()

    # -- the feed ------------------------------------------------------------------------
    def _start_sequence(self) -> int:
        if self._since is None:
            since = self.orthanc.last_change() if self.options.start == "now" else 0
            self.state.set_since(since)
            self._since = since
            log.info("orthanc_follow_start", since=since, start=self.options.start)
        return self._since

    def poll(self) -> bool:
        """Read one page of changes and queue its stable studies; True when more are waiting."""
        since = self._start_sequence()
        page = self.orthanc.changes(since, self.options.page_size)
        for change in page.changes:
            stable = change.change_type == "StableStudy" and change.resource_type == "Study"
            if stable and self.state.enqueue(change.resource_id):
                with self._lock:
                    self._open[change.resource_id] = StudyState()
                log.info("orthanc_study_queued", orthanc=change.resource_id, seq=change.seq)
        if page.last != since:
            self.state.set_since(page.last)  # after every StableStudy up to it is queued
            self._since = page.last
        return not page.done and bool(page.changes)

    # -- the workers ---------------------------------------------------------------------
    def dispatch(self, pool: ThreadPoolExecutor) -> None:
        """Start every open study that is due and not already being handled."""
        now = time.monotonic()
        with self._lock:
            self._in_flight = {k: f for k, f in self._in_flight.items() if not f.done()}
            due = [
                k
                for k in self._open
                if k not in self._in_flight and self._next_at.get(k, 0.0) <= now
            ]
            for study_id in due[: max(0, self.options.workers * 2 - len(self._in_flight))]:
                self._in_flight[study_id] = pool.submit(self.handle, study_id)

    def idle(self) -> bool:
        """True when no study is open (all queued studies reached a final status)."""
        with self._lock:
            return not self._open

    def handle(self, study_id: str) -> None:
        """One attempt at one study; schedules a retry on a passing failure."""
        with self._lock:
            state = self._open.get(study_id) or StudyState()
        state.attempts += 1
        try:
            final = self._attempt(study_id, state)
        except (Retry, OrthancError) as exc:
            if isinstance(exc, OrthancError) and exc.status == 404:
                final = GONE
                state.reason = "study deleted from Orthanc"
            else:
                self._retry_later(study_id, state, str(exc))
                return
        except Exception as exc:  # a bug: keep the study, retry later, log the type only
            self._retry_later(study_id, state, type(exc).__name__)
            return
        state.status = final
        self.state.put_study(study_id, state)
        with self._lock:
            self._open.pop(study_id, None)
            self._next_at.pop(study_id, None)

    def _retry_later(self, study_id: str, state: StudyState, why: str) -> None:
        delay = min(
            self.options.retry_seconds * 2 ** min(state.attempts - 1, 20),
            self.options.retry_max_seconds,
        )
        state.reason = why
        self.state.put_study(study_id, state)
        with self._lock:
            self._open[study_id] = state
            self._next_at[study_id] = time.monotonic() + delay
        log.warning(
            "orthanc_study_retry",
            orthanc=study_id,
            attempts=state.attempts,
            retry_in_s=round(delay, 2),
            why=why,
        )

    def _attempt(self, study_id: str, state: StudyState) -> str:
        saved = self.state.saved_result(study_id)
        if saved is None:
            recorded = self.orthanc.metadata(study_id).get(md.STATUS)
            if recorded:  # finished before the state was lost
                log.info("orthanc_study_already_done", orthanc=study_id, status=recorded)
                return recorded
            instances = self._frontal_instances(study_id)
            if not instances:
                return self._final(study_id, NOT_ELIGIBLE, "no frontal CR/DX instance")
            try:
                result = self._triage(instances)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                if code in FINAL_CODES:
                    return self._final(study_id, FINAL_CODES[code], code.name)
                raise Retry(f"triage server: {code.name}") from None
            saved = SavedResult(
                summary_of(result),
                tuple(
                    SavedObject(o.kind, o.sop_instance_uid, o.data) for o in result.dicom_objects
                ),
            )
            self.state.save_result(study_id, saved)
            state.status = POSTING
            self.state.put_study(study_id, state)
        self._post(study_id, saved, state.attempts)
        self.state.drop_result(study_id)
        return DONE

    def _final(self, study_id: str, status: str, why: str) -> str:
        self.orthanc.set_metadata(study_id, md.STATUS, status)
        log.info("orthanc_study_not_triaged", orthanc=study_id, status=status, why=why)
        return status

    def _frontal_instances(self, study_id: str) -> list[bytes]:
        out: list[bytes] = []
        for series in self.orthanc.get_json(f"/studies/{study_id}/series"):
            modality = str(series.get("MainDicomTags", {}).get("Modality", "")).upper()
            if modality not in MODALITIES:
                continue
            for instance_id in series.get("Instances", []):
                tags = self.orthanc.instance_tags(instance_id)
                if str(tags.get("SOPClassUID", "")) not in RADIOGRAPH_SOP_CLASSES:
                    continue
                if str(tags.get("ViewPosition", "") or "").strip().upper() in LATERAL_VIEWS:
                    continue
                out.append(self.orthanc.instance_file(instance_id))
        return out

    def _triage(self, instances: Sequence[bytes]) -> triage_pb2.TriageResult:
        stream = chunks(instances, calling_ae_title=self.options.calling_ae_title)
        result: triage_pb2.TriageResult = self.stub.TriageStream(
            _with_dicom_objects(stream),
            timeout=self.options.call_timeout,
            metadata=call_metadata(self.options.token),
        )
        return result

    def _post(self, study_id: str, saved: SavedResult, attempts: int) -> None:
        posted: dict[str, list[str]] = {}
        outside = 0
        for obj in saved.objects:
            reply = self.orthanc.post_instance(obj.data)
            outside += str(reply.get("ParentStudy", study_id)) != study_id
            posted.setdefault(obj.kind, []).append(obj.sop_instance_uid)
        s = saved.summary
        record = {
            md.DECISION: s["decision"],
            md.PRIORITY: s["priority"],
            md.WORKLIST: s["worklist"],
            md.WORKLIST_ITEM: s["worklist_item_id"],
            md.REASONS: ",".join(s["defer_reasons"]),
            md.RESULT: json.dumps(
                {
                    "model_version": s["model_version"],
                    "policy_version": s["policy_version"],
                    "p_error": s["p_error"],
                    "objects": posted,
                },
                sort_keys=True,
            ),
        }
        for name, value in record.items():
            self.orthanc.set_metadata(study_id, name, value)
        self.orthanc.set_metadata(study_id, md.STATUS, DONE)
        log.info(
            "orthanc_study_triaged",
            study=hash_uid(str(s["study_instance_uid"])),
            orthanc=study_id,
            decision=s["decision"],
            priority=s["priority"],
            objects=len(saved.objects),
            outside_study=outside,
            replayed=s["replayed"],
            attempts=attempts,
        )

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Follow until ``stop`` is set (a SIGKILL any time loses nothing: see the module)."""
        pool = ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix="triage")
        log.info("orthanc_follow", open_studies=len(self._open), since=self._since)
        backoff = self.options.retry_seconds
        try:
            while not stop.is_set():
                try:
                    more = self.poll()
                    backoff = self.options.retry_seconds
                except OrthancError as exc:
                    log.warning("orthanc_unreachable", why=str(exc), retry_in_s=backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.options.retry_max_seconds)
                    continue
                self.dispatch(pool)
                if not more:
                    stop.wait(self.options.poll_seconds)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            log.info("orthanc_follow_stopped", states=self.state.counts())


__all__ = ["PENDING", "FollowOptions", "Sidecar"]
