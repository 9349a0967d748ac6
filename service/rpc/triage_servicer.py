"""The Triage gRPC servicer: the one boundary where exceptions become gRPC statuses.

Both RPCs go through :meth:`TriageServicer._handle`, which

1. admits the call (at most ``server.max_in_flight`` at once, RESOURCE_EXHAUSTED beyond);
2. gives it a deadline: the client's, or ``server.max_request_seconds`` when it sets none or a
   longer one; every wait after that (the chunk stream, a decode worker, the batcher) is bounded
   by it and ends in DEADLINE_EXCEEDED with a reason, never in a bare CANCELLED;
3. gathers the instances (unary message, or the chunk stream with its size limits);
4. runs the pipeline and converts the :class:`StudyResult` to protobuf;
5. on any exception — ``BaseException`` subclasses raised by native extensions included, only
   KeyboardInterrupt and SystemExit pass — looks the status up in
   :data:`service.rpc.status.STATUS_TABLE` and aborts the call with the exception's own
   (patient-data-free) message; an exception outside the table becomes INTERNAL with a fixed
   message and only its type in the log;
6. writes one structured log line (hashed study UID, stage timings, decision, status) and
   updates the metrics.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc
from service.commit import commit_result, explain_request, to_proto
from service.config import ServerConfig
from service.core.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidStudy,
    NotReady,
    Overloaded,
    TooLarge,
)
from service.core.types import StudyResult
from service.dicom.outputs import GRPC, DicomOutputs
from service.pipeline import RequestOptions, RequestTrace, TriagePipeline
from service.rpc.identity import caller_identity
from service.rpc.metrics import Metrics
from service.rpc.status import status_for, status_label
from service.stages.decode_pool import InstanceBytes
from service.worklist.store import WorklistStore
from triage_common.logging import get_logger

log = get_logger("service.requests")

_DECISIONS = {"AUTO_REPORT": triage_pb2.AUTO_REPORT, "DEFER": triage_pb2.DEFER}
_REASONS = {
    "P_ERROR_ABOVE_COST": triage_pb2.P_ERROR_ABOVE_COST,
    "OUT_OF_DISTRIBUTION": triage_pb2.OUT_OF_DISTRIBUTION,
}
_PRIORITIES = {"ROUTINE": triage_pb2.ROUTINE, "URGENT": triage_pb2.URGENT, "STAT": triage_pb2.STAT}


@dataclass(frozen=True)
class Gathered:
    """The instances of one call and its per-request fields."""

    instances: list[InstanceBytes]
    defer_cost: float | None
    include_overlay: bool
    calling_ae_title: str
    receive_cpu_ms: float = 0.0  # a stream's reader thread (protobuf parsing of the chunks)
    include_dicom_objects: bool = False  # return the result as DICOM objects too


class Admission:
    """Counts Triage calls in flight; beyond the limit a call is refused at once."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self._limit = limit
        self._n = 0
        #: time.monotonic() when the last call ended (0.0: none yet); the memory keeper reads it
        self.last_finished = 0.0
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def in_flight(self) -> int:
        """Calls being handled now."""
        with self._lock:
            return self._n

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the duration of a call; raise Overloaded when none is free."""
        with self._lock:
            if self._n >= self._limit:
                raise Overloaded(f"the server is handling {self._limit} calls; retry later")
            self._n += 1
            n = self._n
        if self._on_change:
            self._on_change(n)
        try:
            yield
        finally:
            with self._lock:
                self._n -= 1
                n = self._n
                self.last_finished = time.monotonic()
            if self._on_change:
                self._on_change(n)


#: Protobuf framing allowed on top of the largest study in gRPC's own receive limit.
TRANSPORT_SLACK_BYTES = 1 << 20


def transport_max_bytes(limits: ServerConfig) -> int:
    """gRPC's own receive limit: above every limit of ours, so that ours are the ones a client
    meets (INVALID_ARGUMENT naming the limit). Only a message larger than a whole study may be
    (``server.max_stream_bytes``) plus 1 MiB is refused by gRPC itself, RESOURCE_EXHAUSTED."""
    return max(limits.max_message_bytes, limits.max_stream_bytes) + TRANSPORT_SLACK_BYTES


def gather_unary(request: triage_pb2.TriageRequest, limits: ServerConfig) -> Gathered:
    """The instances of a unary request, checked against the message, count and size limits."""
    size = request.ByteSize()
    if size > limits.max_message_bytes:
        raise TooLarge(
            f"the request message is {size} bytes, above server.max_message_bytes = "
            f"{limits.max_message_bytes}; send larger studies with TriageStream"
        )
    instances: list[InstanceBytes] = list(request.instances)
    if not instances:
        raise InvalidStudy("the request carries no instances")
    if len(instances) > limits.max_instances:
        raise TooLarge(f"{len(instances)} instances exceed the limit of {limits.max_instances}")
    total = sum(len(b) for b in instances)
    if total > limits.max_stream_bytes:
        raise TooLarge(f"the study is {total} bytes, above the limit of {limits.max_stream_bytes}")
    return Gathered(
        instances,
        request.defer_cost if request.HasField("defer_cost") else None,
        request.include_overlay,
        request.calling_ae_title,
        include_dicom_objects=request.include_dicom_objects,
    )


class _StreamReader:
    """Reads a request stream in its own thread so that the handler can wait with a deadline.

    A client that stalls its stream holds only this thread (until the call ends); the handler
    answers DEADLINE_EXCEEDED with a reason when the study has not arrived in time.
    """

    _END = object()
    #: CPU milliseconds the reader thread spent (set when the stream ended normally).
    cpu_ms = 0.0

    def __init__(self, chunks: Iterable[triage_pb2.StudyChunk]) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._read, args=(iter(chunks),), name="triage-stream-reader", daemon=True
        )
        self._thread.start()

    def _read(self, iterator: Iterator[triage_pb2.StudyChunk]) -> None:
        start = time.thread_time()
        try:
            for chunk in iterator:
                self._queue.put(chunk)
            self.cpu_ms = (time.thread_time() - start) * 1000.0
        except grpc.RpcError:
            self._queue.put(Cancelled("the client ended the stream before it was complete"))
        except BaseException as exc:  # the handler reports it; this thread just ends
            self._queue.put(exc)
        else:
            self._queue.put(self._END)

    def chunks(self, deadline: float, budget: float) -> Iterator[triage_pb2.StudyChunk]:
        """The chunks as they arrive; DeadlineExceeded when the stream is not done in time."""
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise DeadlineExceeded(
                    f"the study stream was not complete within {budget:.3g} s (the client's "
                    "deadline or server.max_request_seconds): send the chunks without pauses"
                ) from None
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, triage_pb2.StudyChunk)
            yield item


def gather_stream(
    chunks: Iterable[triage_pb2.StudyChunk], limits: ServerConfig, deadline: float | None = None
) -> Gathered:
    """Part-10 files from chunks: each instance's chunks contiguous and in order.

    The instances are kept as their chunks (no join): the decode stage copies them once, into a
    decode worker's arena.
    """
    budget = limits.max_request_seconds
    if deadline is None:
        deadline = time.monotonic() + budget
    else:
        budget = max(0.0, deadline - time.monotonic())
    parts: dict[int, list[bytes]] = {}
    current: int | None = None
    total = 0
    defer_cost: float | None = None
    overlay = dicom = False
    ae_title = ""
    reader = _StreamReader(chunks)
    for chunk in reader.chunks(deadline, budget):
        data = chunk.data  # each read of a bytes field copies it: read it once
        if len(data) > limits.max_message_bytes:
            raise TooLarge(
                f"a chunk of {len(data)} bytes is above server.max_message_bytes = "
                f"{limits.max_message_bytes}; send smaller chunks"
            )
        total += len(data)
        if total > limits.max_stream_bytes:
            raise TooLarge(f"the study stream exceeds the limit of {limits.max_stream_bytes} bytes")
        instance = chunk.instance
        if instance != current:
            if instance in parts:
                raise InvalidStudy(
                    f"the stream interleaves instances: instance {instance} resumed after "
                    f"instance {current} began; send each instance's chunks contiguously, in order"
                )
            if len(parts) >= limits.max_instances:
                raise TooLarge(f"the stream carries more than {limits.max_instances} instances")
            parts[instance] = []
            current = instance
        parts[instance].append(data)
        if defer_cost is None and chunk.HasField("defer_cost"):
            defer_cost = chunk.defer_cost
        overlay = overlay or chunk.include_overlay
        dicom = dicom or chunk.include_dicom_objects
        ae_title = ae_title or chunk.calling_ae_title
    instances: list[InstanceBytes] = [p if len(p) > 1 else p[0] for p in parts.values() if any(p)]
    if not instances:
        raise InvalidStudy("the stream carried no instance data")
    return Gathered(
        instances, defer_cost, overlay, ae_title, reader.cpu_ms, include_dicom_objects=dicom
    )


class TriageServicer(triage_pb2_grpc.TriageServicer):
    """Implements ``triage.v1.Triage`` on top of a :class:`TriagePipeline`."""

    def __init__(
        self,
        limits: ServerConfig,
        metrics: Metrics,
        pipeline: Callable[[], TriagePipeline | None],
        store: WorklistStore | None = None,
        token_names: Mapping[str, str] | None = None,
        outputs: DicomOutputs | None = None,
        explain_findings: int = 0,
    ) -> None:
        self._explain_findings = explain_findings  # 0: no counterfactual jobs (explain off)
        self._token_names = dict(token_names or {})  # token fingerprint -> holder's name
        self._limits = limits
        self._metrics = metrics
        self._pipeline = pipeline  # None until the model is loaded and warmed up
        self._store = store  # None: worklist off (tests and benchmarks of the triage path)
        self._outputs = outputs  # DICOM result objects (None: none asked, no destination)
        self.admission = Admission(limits.max_in_flight, metrics.set_in_flight)
        self._draining = threading.Event()

    def drain(self) -> None:
        """Refuse new calls from now on (UNAVAILABLE); calls already admitted continue."""
        self._draining.set()

    def Triage(
        self, request: triage_pb2.TriageRequest, context: grpc.ServicerContext
    ) -> triage_pb2.TriageResult:
        """The whole study in one message."""
        return self._handle("Triage", context, lambda deadline: gather_unary(request, self._limits))

    def TriageStream(
        self, request_iterator: Iterable[triage_pb2.StudyChunk], context: grpc.ServicerContext
    ) -> triage_pb2.TriageResult:
        """A study as a stream of Part-10 chunks."""
        return self._handle(
            "TriageStream",
            context,
            lambda deadline: gather_stream(request_iterator, self._limits, deadline),
        )

    def _deadline(self, context: grpc.ServicerContext) -> float:
        budget = self._limits.max_request_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, max(0.0, float(remaining)))
        return time.monotonic() + budget

    def _handle(
        self, rpc: str, context: grpc.ServicerContext, gather: Callable[[float], Gathered]
    ) -> triage_pb2.TriageResult:
        start, cpu = time.perf_counter(), time.thread_time()
        trace = RequestTrace()
        code = grpc.StatusCode.OK
        message = ""
        reply: triage_pb2.TriageResult | None = None
        failure: BaseException | None = None
        try:
            if self._draining.is_set():
                raise NotReady("the server is shutting down")
            pipeline = self._pipeline()
            if pipeline is None:
                raise NotReady(
                    "the model is not loaded yet; retry when the health check says SERVING"
                )
            with self.admission.slot():
                deadline = self._deadline(context)
                gathered = gather(deadline)
                trace.cpu_ms["receive"] = gathered.receive_cpu_ms
                trace.cpu_ms["assemble"] = (time.thread_time() - cpu) * 1000.0
                options = RequestOptions(
                    defer_cost=gathered.defer_cost,
                    include_overlay=gathered.include_overlay
                    or self._needs_overlay(gathered.include_dicom_objects),
                    calling_ae_title=gathered.calling_ae_title,
                    deadline=deadline,
                    is_active=context.is_active,
                )
                result = pipeline.run(gathered.instances, options, trace)
                cpu = time.thread_time()
                reply = self._commit(result, to_proto(result), trace, gathered, context)
                trace.cpu_ms["result"] = (time.thread_time() - cpu) * 1000.0
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the one boundary: native panics (BaseException) too
            failure = exc
            code, message = status_for(exc)
        finally:
            trace.stages_ms["total"] = (time.perf_counter() - start) * 1000.0
            self._record(rpc, code, trace, failure)
        if reply is None:
            context.abort(code, message)
            raise AssertionError("context.abort returned")  # pragma: no cover
        return reply

    def _needs_overlay(self, asked: bool) -> bool:
        return self._outputs is not None and self._outputs.needs_overlay(GRPC, asked)

    def _commit(
        self,
        result: StudyResult,
        reply: triage_pb2.TriageResult,
        trace: RequestTrace,
        gathered: Gathered,
        context: grpc.ServicerContext,
    ) -> triage_pb2.TriageResult:
        """Name who set the cost and who sent the study, store the result, return what is stored.

        The shared commit (:func:`service.commit.commit_result`): the client sees a result only
        after it is committed (fsync'd) with its worklist item and the DICOM objects queued for
        the destinations, exactly as stored (item id and placed priority included). A resend
        with the same decision inputs (bundle, policy, cost) returns the stored result marked
        ``replayed``, and the log line and metrics then describe that stored result; other
        inputs re-triage the study (``service.worklist.store``). Asked-for DICOM objects are
        added to the reply, not to the stored result.
        """
        if not gathered.include_overlay:  # computed for the DICOM overlays only
            for finding in reply.findings:
                finding.overlay_png = b""
        pending = None
        if self._outputs is not None:
            pending = self._outputs.pending(
                result, gathered.instances, GRPC, gathered.include_dicom_objects
            )
        explain = None
        if self._explain_findings and self._store is not None:
            header, destinations = pending.explanation_route() if pending else (b"", ())
            explain = explain_request(result, self._explain_findings, header, destinations)
        tick = time.perf_counter()
        committed = commit_result(
            self._store,
            result,
            reply,
            caller=caller_identity(context, self._token_names, gathered.calling_ae_title),
            cost_from_request=gathered.defer_cost is not None,
            objects=pending.for_store if pending is not None and pending.routed else None,
            explain=explain,
        )
        reply = committed.reply
        if self._store is not None:
            trace.stages_ms["commit"] = (time.perf_counter() - tick) * 1000.0
        if pending is not None and gathered.include_dicom_objects:
            reply.dicom_objects.extend(
                triage_pb2.DicomObject(
                    kind=o.kind,
                    sop_class_uid=o.sop_class_uid,
                    sop_instance_uid=o.sop_instance_uid,
                    transfer_syntax_uid=o.transfer_syntax_uid,
                    data=o.data,
                )
                for o in pending.reply_objects(
                    self._store,
                    committed.replayed,
                    committed.result_id,
                    triage_pb2.Priority.Name(reply.priority),
                )
            )
        if not committed.replayed:
            if committed.outcome not in ("", "NEW"):
                trace.notes = (*trace.notes, f"re-triaged: {committed.outcome.lower()}")
            return reply
        trace.decision = triage_pb2.Decision.Name(reply.decision)
        trace.reasons = tuple(triage_pb2.DeferReason.Name(r) for r in reply.defer_reasons)
        trace.p_error = reply.p_error
        trace.notes = (*trace.notes, "replayed stored result")
        return reply

    def _record(
        self,
        rpc: str,
        code: grpc.StatusCode,
        trace: RequestTrace,
        failure: BaseException | None,
    ) -> None:
        status = status_label(code)
        fields: dict[str, Any] = {
            "rpc": rpc,
            "status": status,
            "study": trace.study_hash or None,
            "instances": trace.instances,
            "bytes": trace.bytes,
            "decision": trace.decision or None,
            "reasons": list(trace.reasons),
            "p_error": None if trace.p_error is None else round(trace.p_error, 6),
            "ms": {k: round(v, 2) for k, v in trace.stages_ms.items()},
            "cpu_ms": {k: round(v, 2) for k, v in trace.cpu_ms.items()},
            "batch": trace.batch_size or None,
            "j2k_level": trace.reduce_level or None,
            "box": trace.box if trace.box > 1 else None,
            "ignored": trace.ignored,
        }
        if trace.notes:
            fields["notes"] = list(trace.notes)
        if failure is not None:
            fields["error"] = type(failure).__name__
            if code == grpc.StatusCode.INTERNAL:
                fields["reason"] = "internal error (only the exception type is logged)"
            else:
                fields["reason"] = str(failure)  # our own messages: no patient data
        log.info("triage_request", **fields)
        self._metrics.observe_request(rpc, status, trace.decision, trace.stages_ms)
        self._metrics.observe_cpu(trace.cpu_ms)
        pipeline = self._pipeline() if trace.decision else None
        self._metrics.observe_result(
            trace.site,
            trace.decision,
            "OUT_OF_DISTRIBUTION" in trace.reasons,
            trace.p_error,
            pipeline.policy.current().monitoring if pipeline is not None else None,
        )
