"""Assembling the gRPC server: Triage, health, reflection, TLS, tokens, metrics, shutdown.

:func:`create_server` verifies the bundle (sha256 of every file) and builds everything but the
ONNX Runtime session; :meth:`TriageServer.start` opens the port and then loads the model and
warms it up in a background thread (TensorRT engine builds can take minutes; liveness answers
meanwhile). Health (``grpc.health.v1``), by service name:

===================  ========================================================================
name                 SERVING when
===================  ========================================================================
``liveness``         the process serves gRPC at all (NOT_SERVING once shutdown starts)
``model``            the bundle is loaded and warmed up
``readiness``        the model is ready and the server is not draining: send studies
``triage.v1.Triage`` same as ``readiness``
``""`` (overall)     same as ``readiness`` (NOT_SERVING until the bundle is warmed up)
``dicom``            the DICOM Storage SCP listens (only with ``dicom.port`` set)
===================  ========================================================================

With ``inference.backend = "kserve"``, ``model``, ``readiness``, ``triage.v1.Triage`` and the
overall status also follow the remote model's readiness (``ModelReady``, polled every
``inference.kserve_health_seconds``; a batch failing as unavailable flips them at once), while
``liveness`` stays SERVING: an orchestrator takes the replica out of rotation while the model
server is away, without restarting it.

Graceful shutdown (:meth:`TriageServer.stop`, SIGTERM in ``triage serve``): health goes
NOT_SERVING, new calls are refused, calls in flight get ``server.shutdown_grace_seconds`` to
finish (the batcher keeps running for them), then the batcher and metrics endpoint stop.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc, worklist_pb2
from service.bundle import Bundle, load_bundle
from service.config import ConfigError, ServiceConfig, is_loopback
from service.core.types import InferenceModel
from service.dicom.metrics import DicomMetrics
from service.dicom.service import DicomService, dicom_outputs
from service.pipeline import TriagePipeline
from service.rpc.auth import BearerTokenInterceptor
from service.rpc.health import TriageHealthServicer
from service.rpc.identity import token_names
from service.rpc.metrics import Metrics
from service.rpc.triage_servicer import TriageServicer, transport_max_bytes
from service.rpc.worklist_servicer import add_to_server as add_worklist
from service.stages.batcher import MicroBatcher
from service.stages.decode_pool import DecodePool, InProcessDecoder, make_decoder
from service.stages.policy import PolicySource, policy_source
from service.stages.routing import Router, make_router, parse_routing
from service.worklist.open import open_store
from service.worklist.store import WorklistStore
from triage_common.heap import release_free_memory
from triage_common.logging import get_logger

if TYPE_CHECKING:
    from service.stages.kserve import KServeModel

log = get_logger("service.server")

TRIAGE_SERVICE = triage_pb2.DESCRIPTOR.services_by_name["Triage"].full_name
WORKLIST_SERVICE = worklist_pb2.DESCRIPTOR.services_by_name["Worklist"].full_name
LIVENESS = "liveness"
READINESS = "readiness"
MODEL = "model"
#: SERVING while the DICOM Storage SCP listens (``dicom.port`` set).
DICOM_SCP = "dicom"
OVERALL = ""
#: Seconds without a call after which freed heap memory goes back to the kernel.
IDLE_TRIM_SECONDS = 5.0
#: Extra worker threads beyond ``max_in_flight`` (health checks, reflection, fast refusals).
SPARE_WORKERS = 8


def configure_decoders() -> None:
    """Process-wide pydicom settings for serving: lenient reading, no value-quoting warnings.

    pydicom's validation warnings can quote element values (a patient name that is not a
    valid PN, a malformed birth date); in the server they are turned off so that no patient
    data reaches stderr.
    """
    import logging

    from pydicom import config as pydicom_config

    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", module=r"openjpeg(\.|$)")
    warnings.filterwarnings("ignore", module=r"libjpeg(\.|$)")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def _credentials(config: ServiceConfig) -> grpc.ServerCredentials | None:
    sec = config.security
    if not sec.tls:
        return None
    key = Path(sec.tls_key).read_bytes()
    cert = Path(sec.tls_cert).read_bytes()
    client_ca = Path(sec.tls_client_ca).read_bytes() if sec.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


@dataclass
class _Loaded:
    batcher: MicroBatcher
    pipeline: TriagePipeline
    providers: list[str]
    decoder: DecodePool | InProcessDecoder


class TriageServer:
    """A configured gRPC server with its health state, model loader and shutdown logic."""

    def __init__(
        self,
        config: ServiceConfig,
        bundle: Bundle,
        grpc_server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        servicer: TriageServicer,
        metrics: Metrics,
        policy: PolicySource,
        router: Router,
        model: InferenceModel | None,
        dicom: DicomService | None = None,
    ) -> None:
        self.config = config
        self.dicom = dicom  # the Storage SCP and the outbox sender (dicom.* keys)
        self.bundle = bundle
        self.grpc_server = grpc_server
        self.port = port
        self.health = health_servicer
        self.servicer = servicer
        self.metrics = metrics
        self.policy = policy
        self.router = router
        self.metrics_port: int | None = None
        self._model = model
        self._remote: KServeModel | None = None  # the KServe client (inference.backend kserve)
        self._loaded: _Loaded | None = None
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._stopped = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()

    # -- health --------------------------------------------------------------------------

    def _set(self, names: tuple[str, ...], serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in names:
            self.health.set(name, status)

    # -- life cycle ------------------------------------------------------------------------

    def pipeline(self) -> TriagePipeline | None:
        """The pipeline once the model is ready (None before)."""
        loaded = self._loaded
        return loaded.pipeline if loaded is not None and self._ready.is_set() else None

    def start(self, *, wait_ready: bool = False, timeout: float | None = None) -> None:
        """Open the port, then load and warm up the model (in the background unless waiting)."""
        self._set((OVERALL, READINESS, MODEL, TRIAGE_SERVICE), False)
        self._set((LIVENESS,), True)
        self.grpc_server.start()
        if self.dicom is not None:
            self.dicom.start()
            if self.dicom.scp is not None:
                self._set((DICOM_SCP,), True)
        if self.config.metrics.port:
            self.metrics_port = self.metrics.serve(
                self.config.metrics.host, self.config.metrics.port
            )
        log.info(
            "listening",
            port=self.port,
            host=self.config.server.host,
            tls=self.config.security.tls,
            mutual_tls=bool(self.config.security.tls_client_ca),
            auth=bool(self.config.security.tokens or self.config.security.tokens_file),
            metrics_port=self.metrics_port,
            bundle_id=self.bundle.bundle_id,
            torch_loaded="torch" in sys.modules,
        )
        if not self.config.security.tls and not is_loopback(self.config.server.host):
            log.warning(
                "insecure_listener",
                host=self.config.server.host,
                hint="set security.tls_cert/tls_key",
            )
        loader = threading.Thread(target=self._load, name="triage-model-loader", daemon=True)
        loader.start()
        keeper = threading.Thread(target=self._keep_memory, name="triage-memory", daemon=True)
        keeper.start()
        if wait_ready and not self.wait_ready(timeout):
            raise RuntimeError("the model did not become ready in time")

    def _keep_memory(self) -> None:
        """Once calls have stopped for :data:`IDLE_TRIM_SECONDS`, give the heap's free memory
        back to the kernel (freed memory is kept while busy: no page faults per request)."""
        trimmed_at = 0.0
        while not self._stopped.wait(1.0):
            admission = self.servicer.admission
            last = admission.last_finished
            idle = time.monotonic() - last
            if last > trimmed_at and admission.in_flight == 0 and idle >= IDLE_TRIM_SECONDS:
                release_free_memory()
                trimmed_at = last

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the model is warmed up; re-raise a load failure; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready.is_set():
            if self._load_error is not None:
                raise RuntimeError(
                    f"loading the model failed: {self._load_error}"
                ) from self._load_error
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._ready.wait(0.05 if remaining is None else min(0.05, remaining))
        return True

    def _build_model(self) -> tuple[InferenceModel, list[str], int]:
        """The model, the providers it runs on and how many batches run at once."""
        inference = self.config.inference
        if self._model is not None:
            return self._model, ["injected"], inference.streams or 1
        from service.stages.inference import open_model

        opened = open_model(self.bundle, inference)
        self._remote = opened.remote
        return opened.model, opened.providers, opened.plan.streams

    def _follow_remote(self, ready: bool) -> None:
        """Readiness follows the remote model (kserve); liveness stays SERVING."""
        with self._lock:
            if not self._stopping and self._ready.is_set():
                self._set((OVERALL, READINESS, MODEL, TRIAGE_SERVICE), ready)

    def _load(self) -> None:
        try:
            start = time.perf_counter()
            model, providers, streams = self._build_model()
            inference = self.config.inference
            size = self.bundle.spec.size
            for _ in range(inference.warmup_runs):
                for batch in sorted({1, inference.max_batch}):
                    model.run(np.zeros((batch, 1, size, size), dtype=np.float32))
            batcher = MicroBatcher(
                model,
                max_batch=inference.max_batch,
                max_wait_ms=inference.max_wait_ms,
                capacity=inference.queue_capacity,
                observer=self.metrics.observe_batch,
                streams=streams,
            )
            decoder = make_decoder(
                self.config.decode, self.config.eligibility, self.bundle.spec, self.metrics
            )
            decoder.start()
            pipeline = TriagePipeline(
                self.bundle, batcher, self.policy, decoder, router=self.router
            )
            with self._lock:
                if self._stopping:
                    decoder.stop()
                    return
                batcher.start()
                self._loaded = _Loaded(batcher, pipeline, providers, decoder)
                self._ready.set()
                self._set((OVERALL, READINESS, MODEL, TRIAGE_SERVICE), True)
                if self._remote is not None:
                    self._remote.watch(self._follow_remote)
            log.info(
                "ready",
                providers=providers,
                warmup_ms=round((time.perf_counter() - start) * 1000.0, 1),
                max_batch=inference.max_batch,
                max_wait_ms=inference.max_wait_ms,
                streams=streams,
                torch_loaded="torch" in sys.modules,
            )
        except Exception as exc:
            self._load_error = exc
            self._set((OVERALL, READINESS, MODEL, TRIAGE_SERVICE), False)
            log.error("model_load_failed", error=type(exc).__name__, detail=str(exc))

    @property
    def providers(self) -> list[str]:
        """Execution providers in use (empty before the model is loaded)."""
        return list(self._loaded.providers) if self._loaded else []

    def stop(self, grace: float | None = None) -> threading.Event:
        """Drain and stop; returns an event set once everything has stopped."""
        with self._lock:
            if self._stopping:
                return self._stopped
            self._stopping = True
        grace = self.config.server.shutdown_grace_seconds if grace is None else grace
        log.info("draining", in_flight=self.servicer.admission.in_flight, grace_s=grace)
        self.servicer.drain()
        if self.dicom is not None:
            self.dicom.drain()
        self.health.enter_graceful_shutdown()
        done = self.grpc_server.stop(grace)

        def finish() -> None:
            done.wait()
            if self.dicom is not None:  # its triages still use the batcher
                self.dicom.stop(grace)
            if self._loaded is not None:
                self._loaded.batcher.stop(timeout=5.0)
                self._loaded.decoder.stop()
            if self._remote is not None:
                self._remote.close()
            self.metrics.close()
            log.info("stopped", torch_loaded="torch" in sys.modules)
            self._stopped.set()

        threading.Thread(target=finish, name="triage-shutdown", daemon=True).start()
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` has finished (True) or ``timeout`` passed (False)."""
        return self._stopped.wait(timeout)


def add_maintenance_services(
    grpc_server: grpc.Server, application_services: Sequence[str], reflection: bool
) -> health.HealthServicer:
    """The maintenance services, configured apart from the application's: ``grpc.health.v1``
    (statuses set by :class:`TriageServer`) and, when ``reflection`` is on, server reflection
    listing ``application_services`` with health and reflection themselves."""
    health_servicer = TriageHealthServicer()  # answers List too
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    if reflection:
        from grpc_reflection.v1alpha import reflection as grpc_reflection

        names = (*application_services, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME)
        grpc_reflection.enable_server_reflection(names, grpc_server)
    return health_servicer


def create_server(
    config: ServiceConfig,
    *,
    model: InferenceModel | None = None,
    policy: PolicySource | None = None,
    router: Router | None = None,
    store: WorklistStore | None = None,
    extra_services: Sequence[tuple[str, Callable[[grpc.Server], object]]] = (),
) -> tuple[TriageServer, int]:
    """Build the server for ``config`` and bind its port (0: any free port); not started yet.

    The bundle is verified here (a bad bundle raises ``BundleError`` before anything listens).
    ``model`` replaces the ONNX Runtime session (tests); ``policy`` and ``router`` replace the
    bundle-default policy and the default routing rules (calibrated policy, worklist rules);
    ``extra_services`` are ``(full service name, register(grpc_server))`` pairs for more
    servicers (the Worklist service), listed in reflection too.
    """
    configure_decoders()
    bundle = load_bundle(Path(config.bundle))
    if router is None:
        try:
            table = parse_routing(config.routing.table_data(), bundle.labels)
        except ValueError as exc:
            raise ConfigError(f"invalid configuration:\n  routing.rules: {exc}") from exc
        router = make_router(table)
    if store is None:
        store = open_store(config.worklist)
    if store is None:
        log.warning("worklist_off", detail="worklist.path is empty: results are not stored")
    else:
        worklist_store = store
        extra_services = (
            *extra_services,
            (WORKLIST_SERVICE, lambda srv: add_worklist(worklist_store, srv)),
        )
    policy = policy or policy_source(bundle, config.policy)
    s = config.server
    metrics = Metrics(enabled=bool(config.metrics.port))
    outputs = dicom_outputs(config, bundle.labels)
    interceptors = []
    tokens = config.security.all_tokens()
    if tokens:
        interceptors.append(
            BearerTokenInterceptor(tokens, protect_health=config.security.auth_health)
        )
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=s.max_in_flight + SPARE_WORKERS, thread_name_prefix="triage-rpc"
        ),
        interceptors=interceptors,
        options=[
            # above our own limits, so that a client meets ours (INVALID_ARGUMENT naming them)
            ("grpc.max_receive_message_length", transport_max_bytes(s)),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    holder: list[TriageServer] = []
    servicer = TriageServicer(
        s,
        metrics,
        lambda: holder[0].pipeline() if holder else None,
        store,
        token_names(config.security.named_tokens()) if tokens else None,
        outputs=outputs,
        explain_findings=config.explain.max_findings if config.explain.enabled else 0,
    )
    triage_pb2_grpc.add_TriageServicer_to_server(servicer, grpc_server)  # type: ignore[no-untyped-call]
    for _name, register in extra_services:
        register(grpc_server)
    health_servicer = add_maintenance_services(
        grpc_server, (TRIAGE_SERVICE, *(name for name, _ in extra_services)), s.reflection
    )
    address = f"{s.host}:{s.port}" if ":" not in s.host else f"[{s.host}]:{s.port}"
    credentials = _credentials(config)
    if credentials is None:
        port = grpc_server.add_insecure_port(address)
    else:
        port = grpc_server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    dicom = DicomService(
        config,
        outputs,
        store,
        lambda: holder[0].pipeline() if holder else None,
        DicomMetrics(metrics.registry, metrics.enabled),
    )
    server = TriageServer(
        config, bundle, grpc_server, port, health_servicer, servicer, metrics, policy, router,
        model, dicom=dicom,
    )  # fmt: skip
    holder.append(server)
    return server, port
