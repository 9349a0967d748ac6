"""Inference stage, remote: the bundle's model on a KServe v2 / Open Inference Protocol server.

With ``inference.backend = "kserve"`` the graph runs on a remote server (Triton Inference Server,
or any server of the protocol) and :class:`KServeModel` is the model the micro-batcher runs:
``run(batch [B, 1, S, S] float32) -> {output name: array}``, one ``ModelInfer`` call per
micro-batch, tensors as raw little-endian contents. The bundle stays the authority on what the
model means: labels, thresholds, preprocessing, the policy and the bundle id come from its
verified manifest, and at start-up :func:`open_kserve` checks the remote model's metadata
(``ModelMetadata``: input and output names, datatypes and shapes) against the manifest and
refuses a model that differs, naming every difference (:class:`ModelMismatch`).

Failures map to the service's exceptions (the gRPC boundary turns them into statuses):

=============================================  ==================  ======================
the remote call                                exception           the client gets
=============================================  ==================  ======================
UNAVAILABLE (server down), NOT_FOUND (model    :class:`NotReady`   UNAVAILABLE
unloaded), past ``kserve_timeout_seconds``
RESOURCE_EXHAUSTED (the server's queue)        ``Overloaded``      RESOURCE_EXHAUSTED
anything else, or a malformed response         ``InferenceFailed`` INTERNAL
=============================================  ==================  ======================

Readiness follows the remote model: :meth:`KServeModel.watch` polls ``ModelReady`` every
``inference.kserve_health_seconds`` and reports each change; a batch that fails as unavailable
reports not-ready at once, and the next successful poll reports ready again. Meanwhile each
batch asks ``ModelReady`` first (bounded by the poll interval) and fails with NotReady unless it
answers, rather than wait on a server that is down or hung. The
channel retries the connection at most every :data:`MAX_RECONNECT_BACKOFF_MS`, so a restarted
server is found again within a few seconds.

The stubs are our own (``protos/kserve/v2/inference.proto``): tritonclient's gRPC extra pins
protobuf < 7 (see the README's "Scaling out").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from service._proto.kserve.v2 import inference_pb2, inference_pb2_grpc
from service.bundle import Bundle
from service.config import InferenceConfig
from service.core.errors import InferenceFailed, NotReady, Overloaded
from triage_common.bundle_format import OUTPUTS
from triage_common.logging import get_logger

log = get_logger(__name__)
F32 = npt.NDArray[np.float32]

#: Manifest dtypes as the protocol names them.
DATATYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64"}
#: Largest gRPC message either way (a batch of 64 images of 512 x 512 float32 is 64 MiB).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Reconnection backoff of the channel to the server (gRPC's default grows to 120 s).
MIN_RECONNECT_BACKOFF_MS = 250
MAX_RECONNECT_BACKOFF_MS = 2000
#: Automatic ``inference.streams`` with this backend: batches in flight to the server at once.
DEFAULT_STREAMS = 4

_UNAVAILABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


class ModelMismatch(ValueError):
    """The remote model's metadata differs from the bundle's manifest."""


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the protocol describes it: name, datatype, shape (-1: variable)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class KServeSettings:
    """The ``inference.kserve_*`` keys."""

    address: str
    model: str
    version: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    timeout_seconds: float = 10.0
    health_seconds: float = 1.0
    startup_seconds: float = 300.0

    @classmethod
    def from_config(cls, inference: InferenceConfig) -> KServeSettings:
        """The settings ``inference.*`` configures."""
        return cls(
            address=inference.kserve_address,
            model=inference.kserve_model,
            version=inference.kserve_model_version,
            tls=inference.kserve_tls,
            tls_ca=inference.kserve_tls_ca,
            tls_cert=inference.kserve_tls_cert,
            tls_key=inference.kserve_tls_key,
            timeout_seconds=inference.kserve_timeout_seconds,
            health_seconds=inference.kserve_health_seconds,
            startup_seconds=inference.kserve_startup_seconds,
        )

    @property
    def where(self) -> str:
        """``model 'NAME' (version V) at ADDRESS`` for messages."""
        version = f" version {self.version}" if self.version else ""
        return f"KServe model {self.model!r}{version} at {self.address}"


def open_channel(settings: KServeSettings) -> grpc.Channel:
    """A channel to the server: TLS when configured, large messages, quick reconnection."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", MIN_RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", MIN_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if not settings.tls:
        return grpc.insecure_channel(settings.address, options=options)

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(settings.tls_ca),
        private_key=read(settings.tls_key),
        certificate_chain=read(settings.tls_cert),
    )
    return grpc.secure_channel(settings.address, credentials, options=options)


# ---------------------------------------------------------------------------------------------
# The bundle against the remote model's metadata


def expected_tensors(bundle: Bundle) -> tuple[TensorSpec, list[TensorSpec]]:
    """The input and the outputs the bundle's manifest declares, as the protocol shows them."""

    def spec(name: str, entry: dict[str, Any]) -> TensorSpec:
        dtype = str(entry.get("dtype", "float32"))
        shape = tuple(-1 if isinstance(d, str) else int(d) for d in entry["shape"])
        return TensorSpec(name, DATATYPES.get(dtype, dtype.upper()), shape)

    manifest = bundle.manifest
    inp = manifest.get("input") or {"shape": ["batch", 1, bundle.spec.size, bundle.spec.size]}
    outputs = manifest.get("outputs") or {}
    return spec(bundle.input_name, inp), [spec(name, outputs[name]) for name in OUTPUTS]


def _shape_fits(expected: tuple[int, ...], remote: Sequence[int]) -> bool:
    """``remote`` can carry ``expected``: same rank, a variable batch axis, each other axis
    equal or variable; a per-item scalar ``[batch]`` may also be Triton's ``[-1, 1]``."""
    remote = tuple(int(d) for d in remote)
    if len(expected) == 1 and remote == (-1, 1):
        return True
    if len(remote) != len(expected) or not remote or remote[0] != -1:
        return False
    return all(r in (-1, e) for e, r in zip(expected[1:], remote[1:], strict=True))


def _show(shape: Sequence[int]) -> str:
    dims = ["batch" if i == 0 and d == -1 else str(d) for i, d in enumerate(shape)]
    return "[" + ", ".join(dims) + "]"


def _compare(
    kind: str, expected: TensorSpec, remote: inference_pb2.ModelMetadataResponse.TensorMetadata
) -> list[str]:
    problems = []
    if remote.datatype != expected.datatype:
        problems.append(
            f"{kind} {expected.name!r} is {remote.datatype} on the server, "
            f"{expected.datatype} in the bundle"
        )
    if not _shape_fits(expected.shape, remote.shape):
        problems.append(
            f"{kind} {expected.name!r} has shape {_show(remote.shape)} on the server, "
            f"{_show(expected.shape)} in the bundle"
        )
    return problems


def metadata_problems(bundle: Bundle, metadata: inference_pb2.ModelMetadataResponse) -> list[str]:
    """Every difference between the remote model's metadata and the bundle, one line each.

    Inputs must match exactly (name, datatype, shape); every output the service reads must be
    there with the bundle's datatype and shape. Outputs the service does not read are allowed
    (it asks for its own by name).
    """
    inp, outputs = expected_tensors(bundle)
    problems: list[str] = []
    remote_inputs = {t.name: t for t in metadata.inputs}
    if inp.name not in remote_inputs:
        problems.append(
            f"input {inp.name!r} is missing (the server's inputs: {sorted(remote_inputs)})"
        )
    else:
        problems += _compare("input", inp, remote_inputs[inp.name])
    extra = sorted(set(remote_inputs) - {inp.name})
    if extra:
        problems.append(f"the server's model takes inputs the bundle does not feed: {extra}")
    remote_outputs = {t.name: t for t in metadata.outputs}
    for out in outputs:
        if out.name not in remote_outputs:
            problems.append(
                f"output {out.name!r} is missing (the server's outputs: {sorted(remote_outputs)})"
            )
        else:
            problems += _compare("output", out, remote_outputs[out.name])
    return problems


# ---------------------------------------------------------------------------------------------
# The model


Listener = Callable[[bool], None]


class KServeModel:
    """The bundle's model on a KServe v2 server: ``run`` is one ``ModelInfer`` per batch."""

    def __init__(self, settings: KServeSettings, bundle: Bundle) -> None:
        self.settings = settings
        self.bundle = bundle
        self._channel = open_channel(settings)
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._input, outputs = expected_tensors(bundle)
        self._outputs = [o.name for o in outputs]
        self._lock = threading.Lock()
        self._ready: bool | None = None
        self._listeners: list[Listener] = []
        self._closed = threading.Event()

    @property
    def providers(self) -> list[str]:
        """Where the model runs, as the server logs it (``kserve:ADDRESS/MODEL``)."""
        return [f"kserve:{self.settings.address}/{self.settings.model}"]

    # -- the protocol calls --------------------------------------------------------------

    def _timeout(self, limit: float | None = None) -> float:
        timeout = self.settings.timeout_seconds
        return timeout if limit is None else min(timeout, limit)

    def check(self) -> None:
        """Refuse a remote model that is not ready (NotReady) or differs from the bundle
        (:class:`ModelMismatch`, naming every difference)."""
        s = self.settings
        try:
            ready = self._stub.ModelReady(
                inference_pb2.ModelReadyRequest(name=s.model, version=s.version),
                timeout=self._timeout(),
            ).ready
            if not ready:
                raise NotReady(f"the {s.where} is not ready")
            metadata = self._stub.ModelMetadata(
                inference_pb2.ModelMetadataRequest(name=s.model, version=s.version),
                timeout=self._timeout(),
            )
        except grpc.RpcError as exc:
            raise self._failure(exc, "checking") from None
        problems = metadata_problems(self.bundle, metadata)
        if problems:
            raise ModelMismatch(
                f"the {s.where} does not match bundle {self.bundle.bundle_id}: "
                + "; ".join(problems)
            )
        self._mark(True)

    def probe(self) -> bool:
        """One ``ModelReady`` call: True when the remote model answers ready."""
        s = self.settings
        try:
            request = inference_pb2.ModelReadyRequest(name=s.model, version=s.version)
            ready = bool(
                self._stub.ModelReady(request, timeout=self._timeout(s.health_seconds)).ready
            )
        except grpc.RpcError:
            ready = False
        self._mark(ready)
        return ready

    def run(self, batch: F32) -> dict[str, F32]:
        """The batch's outputs from the server (raw FP32 both ways).

        While the remote model is known to be unready (after a failed batch or poll) a batch
        first asks ``ModelReady`` (at most ``kserve_health_seconds``) and fails with NotReady
        unless it answers ready, instead of waiting ``kserve_timeout_seconds`` on a server that
        is down or hung.
        """
        with self._lock:
            known_down = self._ready is False
        if known_down and not self.probe():
            raise NotReady(f"the {self.settings.where} is not ready; retry later")
        data = np.ascontiguousarray(batch, dtype="<f4")
        request = inference_pb2.ModelInferRequest(
            model_name=self.settings.model,
            model_version=self.settings.version,
            inputs=[
                inference_pb2.ModelInferRequest.InferInputTensor(
                    name=self._input.name, datatype="FP32", shape=list(data.shape)
                )
            ],
            outputs=[
                inference_pb2.ModelInferRequest.InferRequestedOutputTensor(name=name)
                for name in self._outputs
            ],
            raw_input_contents=[data.tobytes()],
        )
        try:
            response = self._stub.ModelInfer(request, timeout=self._timeout())
        except grpc.RpcError as exc:
            raise self._failure(exc, "running a batch") from None
        self._mark(True)
        return self._read(response, len(data))

    def _read(self, response: inference_pb2.ModelInferResponse, n: int) -> dict[str, F32]:
        raw = list(response.raw_output_contents)
        out: dict[str, F32] = {}
        for i, tensor in enumerate(response.outputs):
            if tensor.name not in self._outputs:
                continue
            if tensor.datatype != "FP32":
                raise InferenceFailed(
                    f"the {self.settings.where} returned {tensor.name!r} as {tensor.datatype}"
                )
            shape = tuple(int(d) for d in tensor.shape)
            if raw:
                values = np.frombuffer(raw[i], dtype="<f4")
            else:
                values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
            if not shape or shape[0] != n or values.size != int(np.prod(shape)):
                raise InferenceFailed(
                    f"the {self.settings.where} returned {tensor.name!r} with shape "
                    f"{list(shape)} for a batch of {n}"
                )
            out[tensor.name] = values.reshape(shape).astype(np.float32)
        missing = [name for name in self._outputs if name not in out]
        if missing:
            raise InferenceFailed(f"the {self.settings.where} did not return {missing}")
        return out

    def _failure(self, exc: grpc.RpcError, doing: str) -> Exception:
        """The service's exception for a failed call; unavailability flips readiness."""
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
        name = code.name if code is not None else "UNKNOWN"
        log.warning("kserve_call_failed", doing=doing, code=name, detail=details[:300])
        if code in _UNAVAILABLE:
            self._mark(False)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                why = f"did not answer within {self.settings.timeout_seconds:g} s"
            else:
                why = f"is unavailable ({name})"
            return NotReady(f"the {self.settings.where} {why}; retry later")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return Overloaded(f"the {self.settings.where} is overloaded; retry later")
        # the server's own words (tensor names and sizes, never study data) help at start-up
        detail = f": {details[:200]}" if details else ""
        return InferenceFailed(f"the {self.settings.where} failed {doing} ({name}{detail})")

    # -- readiness -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The last known readiness of the remote model (False before any answer)."""
        with self._lock:
            return bool(self._ready)

    def _mark(self, ready: bool) -> None:
        with self._lock:
            changed = self._ready is not None and self._ready != ready
            self._ready = ready
            listeners = list(self._listeners) if changed else []
        if changed:
            log.warning("kserve_model_ready" if ready else "kserve_model_unready",
                        model=self.settings.model, address=self.settings.address)  # fmt: skip
        for listener in listeners:
            listener(ready)

    def watch(self, listener: Listener) -> threading.Thread:
        """Call ``listener(ready)`` on every change of the remote model's readiness, polled
        every ``kserve_health_seconds`` until :meth:`close`; returns the polling thread."""
        with self._lock:
            self._listeners.append(listener)

        def poll() -> None:
            while not self._closed.wait(self.settings.health_seconds):
                self.probe()

        thread = threading.Thread(target=poll, name="triage-kserve-health", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop polling and close the channel."""
        self._closed.set()
        self._channel.close()


def open_kserve(bundle: Bundle, inference: InferenceConfig) -> KServeModel:
    """A :class:`KServeModel` whose remote model is ready and matches the bundle.

    Waits up to ``inference.kserve_startup_seconds`` for an unreachable or not-ready server
    (retrying every ``kserve_health_seconds``), then raises NotReady; a mismatch raises
    :class:`ModelMismatch` at once.
    """
    settings = KServeSettings.from_config(inference)
    model = KServeModel(settings, bundle)
    deadline = time.monotonic() + settings.startup_seconds
    while True:
        try:
            model.check()
            return model
        except NotReady as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                model.close()
                raise NotReady(f"{exc} (gave up after {settings.startup_seconds:g} s)") from None
            log.warning(
                "kserve_waiting", model=settings.model, address=settings.address, reason=str(exc)
            )
            time.sleep(min(settings.health_seconds, left))
        except BaseException:
            model.close()
            raise
