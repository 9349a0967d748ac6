"""The micro-batcher: batches up to max_batch, bounded capacity, deadlines, parallel streams."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.core.errors import InferenceFailed, Overloaded
from service.stages.batcher import MicroBatcher
from tests.helpers.servers import FakeModel


def test_batcher_batches_and_bounds() -> None:
    """The batcher groups waiting images up to max_batch, refuses beyond capacity, drops expired."""
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = MicroBatcher(model, max_batch=3, max_wait_ms=20, capacity=5)
    batcher.start()
    image = np.zeros((1, 8, 8), np.float32)
    first = batcher.submit(image, None)  # taken alone, blocks in the model
    time.sleep(0.1)
    waiting = [batcher.submit(image, None) for _ in range(4)]
    expired = batcher.submit(image, time.monotonic() - 1.0)
    with pytest.raises(Overloaded):
        batcher.submit(image, None)
    gate.set()
    assert first.result(5).batch_size == 1
    assert [f.result(5).batch_size for f in waiting] == [3, 3, 3, 1]
    with pytest.raises(Exception, match="deadline"):
        expired.result(5)
    batcher.stop(5)
    assert model.batches == [1, 3, 1]


class _PairedModel:
    """Probabilities echo each image's value; a run returns only while another run is inside."""

    def __init__(self, wait_s: float) -> None:
        self.barrier = threading.Barrier(2, timeout=wait_s)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Wait for a second concurrent run, then answer."""
        self.barrier.wait()
        n = batch.shape[0]
        values = batch.reshape(n, -1)[:, :1].astype(np.float32)
        return {
            "probabilities": np.repeat(values, 4, axis=1),
            "cams": np.ones((n, 4, 2, 2), np.float32),
            "ood_score": np.zeros(n, np.float32),
            "p_error": values[:, 0],
            "p_error_labels": np.repeat(values, 4, axis=1),
        }


def test_batcher_streams_run_batches_at_once() -> None:
    """With two streams two batches are inside the model together; each image gets its own row."""
    batcher = MicroBatcher(_PairedModel(10.0), max_batch=1, max_wait_ms=0, capacity=8, streams=2)
    assert batcher.streams == 2
    batcher.start()
    values = (0.2, 0.4, 0.6, 0.8)
    futures = [batcher.submit(np.full((1, 4, 4), v, np.float32), None) for v in values]
    outputs = [f.result(20) for f in futures]
    batcher.stop(5)
    assert [o.p_error for o in outputs] == pytest.approx(values, abs=1e-6)
    assert all(o.batch_size == 1 for o in outputs)


def test_batcher_single_stream_runs_one_batch_at_a_time() -> None:
    """With one stream a run never overlaps another (the paired model then gives up)."""
    batcher = MicroBatcher(_PairedModel(0.5), max_batch=1, max_wait_ms=0, capacity=8, streams=1)
    batcher.start()
    future = batcher.submit(np.zeros((1, 4, 4), np.float32), None)
    with pytest.raises(InferenceFailed):
        future.result(20)
    batcher.stop(5)
