"""Inference stage: micro-batching across concurrent requests in dedicated batcher threads.

Request threads :meth:`MicroBatcher.submit` one preprocessed image and wait on the returned
future. A batcher thread takes the oldest waiting image, waits at most ``max_wait_ms`` (from
that image's arrival) for more, up to ``max_batch``, and runs them through the model in one
call. Images whose request has been cancelled or whose deadline has passed are dropped before
the batch is formed. The queue is bounded: a full queue raises :class:`Overloaded` at once.

``streams`` batcher threads share the queue and the model, so that many batches run at once
(``inference.streams``; ONNX Runtime sessions are safe to run from several threads). On a CPU
that beats one batch spread over every core: a batch split across cores waits for its slowest
part, and the decode threads keep taking a core away from one part or another.

The model is anything with ``run(batch [B, 1, S, S] float32) -> {output name: array}``
(:class:`triage_common.onnx_runtime.OnnxRuntimeModel` in the server, a fake in unit tests).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.core.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.core.types import InferenceModel, ModelOutput
from triage_common.bundle_format import CAMS, OOD_SCORE, P_ERROR, P_ERROR_LABELS, PROBABILITIES
from triage_common.logging import get_logger

log = get_logger(__name__)
F32 = npt.NDArray[np.float32]


@dataclass
class _Item:
    image: F32
    deadline: float | None  # time.monotonic() seconds
    future: Future[ModelOutput]
    enqueued: float


BatchObserver = Callable[[int, float, int], None]  # (batch size, inference seconds, queue depth)


def split_outputs(
    outputs: dict[str, F32], queue_ms: list[float], inference_ms: float, cpu_ms: float = 0.0
) -> list[ModelOutput]:
    """One :class:`ModelOutput` per row of a batch's outputs."""
    n = len(queue_ms)
    probs = np.asarray(outputs[PROBABILITIES], dtype=np.float64)
    cams = np.asarray(outputs[CAMS], dtype=np.float32)
    ood = np.asarray(outputs[OOD_SCORE], dtype=np.float64).reshape(n)
    p_error = np.asarray(outputs[P_ERROR], dtype=np.float64).reshape(n)
    per_label = np.asarray(outputs[P_ERROR_LABELS], dtype=np.float64)
    return [
        ModelOutput(
            probabilities=probs[i].copy(),
            cams=cams[i].copy(),
            ood_score=float(ood[i]),
            p_error=float(p_error[i]),
            p_error_labels=per_label[i].copy(),
            queue_ms=queue_ms[i],
            inference_ms=inference_ms,
            batch_size=n,
            inference_cpu_ms=cpu_ms / n,
        )
        for i in range(n)
    ]


class MicroBatcher:
    """A bounded queue and one thread that runs the model on micro-batches."""

    def __init__(
        self,
        model: InferenceModel,
        *,
        max_batch: int,
        max_wait_ms: float,
        capacity: int,
        observer: BatchObserver | None = None,
        streams: int = 1,
    ) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self._model = model
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._capacity = capacity
        self._observer = observer
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"triage-batcher-{i}", daemon=True)
            for i in range(streams)
        ]

    @property
    def depth(self) -> int:
        """Images waiting for a batch."""
        with self._cond:
            return len(self._queue)

    @property
    def streams(self) -> int:
        """How many batches can run at once."""
        return len(self._threads)

    def start(self) -> None:
        """Start the batcher threads."""
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued work, then end the threads; later submits raise NotReady."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(left)

    def submit(self, image: F32, deadline: float | None) -> Future[ModelOutput]:
        """Queue one image ``(1, S, S)``; the future resolves to its :class:`ModelOutput`."""
        item = _Item(image, deadline, Future(), time.monotonic())
        with self._cond:
            if self._stopping:
                raise NotReady("the service is shutting down")
            if len(self._queue) >= self._capacity:
                raise Overloaded(
                    f"inference queue is full ({self._capacity} images waiting); retry later"
                )
            self._queue.append(item)
            self._cond.notify_all()
        return item.future

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue[0].enqueued
            while len(self._queue) < self._max_batch and not self._stopping:
                remaining = first + self._max_wait - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self._max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            now = time.monotonic()
            live: list[_Item] = []
            for item in taken:
                if not item.future.set_running_or_notify_cancel():
                    continue  # the request gave up waiting
                if item.deadline is not None and now >= item.deadline:
                    item.future.set_exception(
                        DeadlineExceeded("the deadline passed while waiting for inference")
                    )
                    continue
                live.append(item)
            if live:
                self._run(live, now)

    def _run(self, items: list[_Item], started: float) -> None:
        batch = np.stack([item.image for item in items]).astype(np.float32, copy=False)
        try:
            t0, c0 = time.perf_counter(), time.thread_time()
            outputs = self._model.run(batch)
            seconds, cpu = time.perf_counter() - t0, time.thread_time() - c0
            results = split_outputs(
                outputs,
                [(started - item.enqueued) * 1000.0 for item in items],
                seconds * 1000.0,
                cpu * 1000.0,
            )
        except (NotReady, Overloaded) as exc:  # a remote model (kserve) that is down or full
            log.warning("inference_unavailable", error=type(exc).__name__, batch=len(items))
            for item in items:
                item.future.set_exception(type(exc)(str(exc)))
            return
        except Exception as exc:
            log.error("inference_failed", error=type(exc).__name__, batch=len(items))
            for item in items:
                item.future.set_exception(InferenceFailed("the inference runtime failed"))
            return
        for item, result in zip(items, results, strict=True):
            item.future.set_result(result)
        if self._observer is not None:
            self._observer(len(items), seconds, self.depth)
