"""Prometheus metrics (prometheus-client), off unless ``metrics.port`` is set.

Each server owns its own registry, so several servers can live in one process (tests). Labels
are fixed vocabularies (RPC name, status code, decision, stage): never a UID or patient value.

- ``triage_requests_total{rpc, status, decision}``: finished calls (decision empty on errors).
- ``triage_stage_seconds{stage}``: decode, preprocess, queue, inference, decision, total.
- ``triage_batch_size``: images per inference batch.
- ``triage_queue_depth``: images waiting for the batcher (sampled after each batch).
- ``triage_in_flight``: Triage calls being handled.
- ``triage_cpu_seconds_total{stage}``: CPU time per step of finished calls, where it ran:
  ``receive`` (a stream's reader thread), ``assemble``, ``hand-over`` (copying the study into a
  decode worker), ``header``/``decode``/``preprocess`` (in the decode worker), ``model`` (the
  batcher thread's share per image), ``conclude``, ``result`` (protobuf, worklist commit).
  gRPC's own transport threads are not in it: a process's total less these is their share.
- ``triage_decode_tasks_total{outcome}`` and ``triage_decode_seconds``: studies through the
  decode workers (outcome ``ok`` or the error class) and their wall time.
- ``triage_decode_worker_replacements_total{reason}``: workers killed or retired and replaced
  (``time limit``, ``memory limit``, ``crash``, ``recycled``, ...).
- ``triage_decode_workers{state}``: workers ``busy`` and ``total``.

Per-site production monitoring (see the README's "Monitoring in production"; ``site`` is one of
the calibration set's sites named in the loaded policy file, ``other`` for any other site, or
``all`` without a calibrated policy: a fixed vocabulary, never a raw header value):

- ``triage_site_results_total{site, decision}``: triaged studies by decision;
- ``triage_site_ood_total{site}``: of them, deferred by the OOD guard;
- ``triage_p_error_psi{site}``: population stability index of the recalibrated P(error) of the
  site's latest ``DRIFT_WINDOW`` studies against the calibration set's histogram for that site
  (``all`` for ``other``), reported once the window holds ``MIN_WINDOW`` studies;
- ``triage_p_error_window{site}``: studies in that window;
- ``triage_expected_deferral_rate{site}``, ``triage_expected_ood_rate{site}``: what the
  calibration set showed at the policy's cost, for alert rules to compare the rates with.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from triage_common.monitoring import MIN_WINDOW, SlidingHistogram, population_stability_index
from triage_common.policy_format import MonitoringReference

#: Studies per site in the drift window.
DRIFT_WINDOW = 1000

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
        self.cpu_seconds = Counter(
            "triage_cpu_seconds",
            "CPU time of finished calls by step, where it ran",
            ["stage"],
            registry=self.registry,
        )
        self.decode_tasks = Counter(
            "triage_decode_tasks",
            "Studies decoded by the decode workers, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.decode_seconds = Histogram(
            "triage_decode_seconds",
            "Wall time of one study in a decode worker (hand-over included)",
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.decode_replacements = Counter(
            "triage_decode_worker_replacements",
            "Decode workers replaced, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.decode_workers = Gauge(
            "triage_decode_workers", "Decode workers by state", ["state"], registry=self.registry
        )
        self.site_results = Counter(
            "triage_site_results",
            "Triaged studies per site (calibration-set sites, other, or all) and decision",
            ["site", "decision"],
            registry=self.registry,
        )
        self.site_ood = Counter(
            "triage_site_ood",
            "Triaged studies deferred by the OOD guard, per site",
            ["site"],
            registry=self.registry,
        )
        self.p_error_psi = Gauge(
            "triage_p_error_psi",
            "PSI of the latest studies' P(error) against the calibration set's, per site",
            ["site"],
            registry=self.registry,
        )
        self.p_error_window = Gauge(
            "triage_p_error_window",
            "Studies in the per-site P(error) drift window",
            ["site"],
            registry=self.registry,
        )
        self.expected_deferral = Gauge(
            "triage_expected_deferral_rate",
            "Deferral rate of the calibration set at the policy's cost, per site",
            ["site"],
            registry=self.registry,
        )
        self.expected_ood = Gauge(
            "triage_expected_ood_rate",
            "OOD rate of the calibration set, per site",
            ["site"],
            registry=self.registry,
        )
        self._reference: MonitoringReference | None = None
        self._windows: dict[str, SlidingHistogram] = {}
        self._monitor_lock = threading.Lock()
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

    def decode_task(self, seconds: float, outcome: str) -> None:
        """One study through a decode worker (the decode pool's observer)."""
        if self.enabled:
            self.decode_tasks.labels(outcome=outcome).inc()
            self.decode_seconds.observe(seconds)

    def decode_worker_replaced(self, reason: str) -> None:
        """A decode worker was replaced (time limit, memory limit, crash, recycled...)."""
        if self.enabled:
            self.decode_replacements.labels(reason=reason).inc()

    def decode_workers_busy(self, busy: int, total: int) -> None:
        """How many decode workers are working now, of how many."""
        if self.enabled:
            self.decode_workers.labels(state="busy").set(busy)
            self.decode_workers.labels(state="total").set(total)

    def _use_reference(self, reference: MonitoringReference | None) -> None:
        """Start new windows and expectation gauges when the policy's reference changes."""
        if reference is self._reference:
            return
        self._reference = reference
        self._windows = {}
        if reference is None:
            return
        for group in (*reference.studies, "other"):
            source = "all" if group == "other" else group
            self.expected_deferral.labels(site=group).set(reference.deferral_rate[source])
            self.expected_ood.labels(site=group).set(reference.ood_rate[source])

    def observe_result(
        self,
        site: str,
        decision: str,
        out_of_distribution: bool,
        p_error: float | None,
        reference: MonitoringReference | None,
    ) -> None:
        """Per-site monitoring of one triaged study (``reference``: the loaded policy's)."""
        if not self.enabled or not decision:
            return
        with self._monitor_lock:
            self._use_reference(reference)
            if reference is None:
                label, group = "all", ""
            else:
                group = reference.group(site)
                label = group if group != "all" else "other"
            self.site_results.labels(site=label, decision=decision).inc()
            if out_of_distribution:
                self.site_ood.labels(site=label).inc()
            if reference is None or p_error is None:
                return
            window = self._windows.get(label)
            if window is None:
                window = self._windows[label] = SlidingHistogram(reference.bins, DRIFT_WINDOW)
            window.add(float(p_error))
            self.p_error_window.labels(site=label).set(len(window))
            if len(window) >= MIN_WINDOW:
                psi = population_stability_index(
                    reference.p_error_histogram[group], window.counts().astype(float)
                )
                self.p_error_psi.labels(site=label).set(psi)

    def observe_cpu(self, cpu_ms: dict[str, float]) -> None:
        """Add one finished call's CPU milliseconds per step."""
        if not self.enabled:
            return
        for stage, ms in cpu_ms.items():
            if ms > 0:
                self.cpu_seconds.labels(stage=stage).inc(ms / 1000.0)
