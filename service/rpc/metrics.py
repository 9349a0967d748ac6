"""Prometheus metrics (prometheus-client), off unless ``metrics.port`` is set.

Each server owns its own registry, so several servers can live in one process (tests). Labels
are fixed vocabularies (RPC name, status code, decision, stage): never a UID or patient value.

- ``triage_requests_total{rpc, status, decision}``: finished calls (decision empty on errors).
- ``triage_stage_seconds{stage}``: decode, preprocess, queue, inference, decision, total.
- ``triage_batch_size``: images per inference batch.
- ``triage_queue_depth``: images waiting for the batcher (sampled after each batch).
- ``triage_in_flight``: Triage calls being handled.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The service's metrics in a private registry; no-ops when ``enabled`` is False."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "triage_requests",
            "Finished Triage calls by status and decision",
            ["rpc", "status", "decision"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "triage_stage_seconds",
            "Wall time per pipeline stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "triage_batch_size",
            "Images per inference batch",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "triage_queue_depth", "Images waiting for the batcher", registry=self.registry
        )
        self.in_flight = Gauge(
            "triage_in_flight", "Triage calls being handled", registry=self.registry
        )
        self._http: Any = None

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint, if running."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def observe_request(
        self, rpc: str, status: str, decision: str, stages_ms: dict[str, float]
    ) -> None:
        """Count a finished call and record its stage times."""
        if not self.enabled:
            return
        self.requests.labels(rpc=rpc, status=status, decision=decision).inc()
        for stage, ms in stages_ms.items():
            self.stage_seconds.labels(stage=stage).observe(ms / 1000.0)

    def observe_batch(self, size: int, seconds: float, depth: int) -> None:
        """Record one inference batch (the batcher's observer)."""
        del seconds
        if not self.enabled:
            return
        self.batch_size.observe(size)
        self.queue_depth.set(depth)

    def set_in_flight(self, n: int) -> None:
        """Current number of Triage calls being handled."""
        if self.enabled:
            self.in_flight.set(n)
