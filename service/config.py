"""Service configuration: a dataclass tree read from TOML, environment variables and CLI flags.

Precedence: command-line flags > environment variables > the TOML file > the defaults below.
Everything is validated at start-up; an error names the key and where its value came from
(``server.port = -1 (from env TRIAGE_SERVER__PORT): must be between 0 and 65535``).

TOML file (``--config triage.toml``): one table per section, e.g.::

    bundle = "bundles/demo"
    [server]
    port = 50051
    [inference]
    providers = ["CUDA", "CPU"]

Environment variables (the one mapping): ``TRIAGE_<SECTION>__<KEY>`` in upper case, a double
underscore between section and key; top-level keys are ``TRIAGE_<KEY>``. Lists are comma
separated, booleans are ``true/false/1/0/yes/no``, an empty value for an optional number means
"unset". Examples: ``TRIAGE_BUNDLE=/models/b1``, ``TRIAGE_SERVER__PORT=6000``,
``TRIAGE_INFERENCE__PROVIDERS=CUDA,CPU``, ``TRIAGE_SECURITY__TOKENS=s3cret``.
An unknown ``TRIAGE_*__*`` variable is an error (it is most likely a typo).

Command-line flags: ``--bundle``, ``--port``, ``--host``, ``--metrics-port``, ``--log-level``,
and ``--set SECTION.KEY=VALUE`` (repeatable) for any key.

Keys (default in brackets):

``bundle`` [required]
    Model bundle folder (``manifest.json`` + ``triage.onnx``); verified by sha256 at start-up.

``server.host`` ["127.0.0.1"]
    Address to bind. Loopback by default; binding elsewhere without TLS logs a warning.
``server.port`` [50051]
    TCP port; 0 picks a free port (tests).
``server.max_message_bytes`` [67108864]
    Largest single gRPC message accepted (a unary study, or one chunk).
``server.max_stream_bytes`` [536870912]
    Largest total of all instances of one study (unary or streamed).
``server.max_instances`` [64]
    Most DICOM instances in one study.
``server.max_in_flight`` [64]
    Triage calls handled at once; the next one gets RESOURCE_EXHAUSTED.
``server.max_request_seconds`` [120.0]
    Deadline applied when the client sets none (or a longer one).
``server.shutdown_grace_seconds`` [30.0]
    On SIGTERM: time given to in-flight calls before they are cancelled.
``server.reflection`` [true]
    Serve gRPC server reflection.

``decode.max_pixels`` [100000000]
    Largest Rows x Columns x SamplesPerPixel x NumberOfFrames of an instance, checked from the
    header before any pixel buffer is allocated.
``decode.reduce`` [true]
    Read images at reduced resolution when the model input allows it: JPEG 2000 at a lower
    wavelet resolution level (most of the codestream is never decoded), other encodings by
    averaging k x k blocks of stored values right after decoding. Off: every image is mapped
    to display values at full resolution (bit-identical results across lossless encodings).
``decode.reduce_min_scale`` [2.0]
    The reduced image keeps at least this multiple of the model input size on its short side.

``eligibility.modalities`` [["CR", "DX"]]
    Accepted Modality values.
``eligibility.body_parts`` [["CHEST"]]
    Accepted BodyPartExamined values.
``eligibility.allow_missing_body_part`` [true]
    Accept images without BodyPartExamined (logged).
``eligibility.frontal_views`` [["PA", "AP"]]
    ViewPosition values that are frontal views, in order of preference.
``eligibility.allow_missing_view`` [true]
    Accept an image without ViewPosition as a frontal view (ranked after the listed views).

``inference.providers`` [["TensorRT", "CUDA", "CPU"]]
    ONNX Runtime execution providers in order of preference; only those that load are used.
``inference.max_batch`` [8]
    Largest micro-batch.
``inference.max_wait_ms`` [5.0]
    How long the batcher waits for more requests after the first one of a batch.
``inference.queue_capacity`` [64]
    Images waiting for the batcher; beyond it a request gets RESOURCE_EXHAUSTED.
``inference.streams`` [0]
    Batches that run at the same time, each in its own thread on the one ONNX Runtime session
    (0: automatic, 1 on a GPU provider and ``min(4, cores)`` on the CPU). On a CPU, several
    single-threaded batches keep every core busy while decoding takes one away, where one
    batch spread over all cores waits for its slowest part: on 2 cores, 2 streams of 1 thread
    served uncompressed RG1 studies at concurrency 8 about 1.2 times faster than 1 stream of 2
    threads (15.3 against 12.9 studies/s), at the price of a lone request's latency (p50 116
    against 91 ms at concurrency 1). Set 1 where single-study latency matters more.
``inference.intra_op_threads`` [0]
    ONNX Runtime intra-op threads per stream (0: automatic, ``cores // streams`` on the CPU,
    ONNX Runtime's default on a GPU provider).
``inference.warmup_runs`` [2]
    Batches run at start-up before the service reports SERVING.
``inference.trt_engine_cache`` [""]
    Folder where ONNX Runtime's TensorRT provider keeps the engines it builds (the first start
    on a new GPU builds them, which takes minutes for DenseNet-121); empty: no cache.
``inference.trt_fp16`` [true]
    Let the TensorRT provider use FP16 kernels.

``policy.defer_cost`` [unset: the bundle's default]
    Defer cost when the request sets none.
``policy.min_defer_cost`` / ``policy.max_defer_cost`` [0.0 / 1.0]
    Bounds of a per-request override (outside: INVALID_ARGUMENT).
``policy.file`` [""]
    Calibrated policy file (``triage calibrate``); loaded at start-up, reloaded on SIGHUP.

``security.tls_cert`` / ``security.tls_key`` [""]
    PEM server certificate chain and key; both set turns TLS on.
``security.tls_client_ca`` [""]
    PEM CA bundle; set (with TLS) it requires and verifies client certificates (mutual TLS).
``security.tokens`` [[]]
    Accepted bearer tokens (``authorization: Bearer <token>`` metadata).
``security.tokens_file`` [""]
    File with one accepted token per line (added to ``security.tokens``).
``security.auth_health`` [false]
    Require the token for ``grpc.health.v1`` too (off: orchestrator probes stay open).

``metrics.port`` [0]
    Prometheus endpoint port; 0 turns metrics off.
``metrics.host`` ["127.0.0.1"]
    Prometheus endpoint address.

``worklist.path`` ["worklist.db"]
    SQLite file of the worklist (WAL, synchronous FULL); a result is acknowledged to the client
    only after it is committed there. The same study sent again with the same bundle returns
    the stored result (``replayed``) and adds no item. An empty path turns the worklist off
    (results are neither stored nor idempotent: for benchmarks and tests of the triage path
    only; a warning is logged at start-up).
``worklist.lease_seconds`` [900.0]
    Default lease of a Claim; an expired lease returns the item to QUEUED.

``routing.rules`` [the shipped defaults]
    Ordered routing rules, first match wins, as a TOML array of tables (``[[routing.rules]]``);
    file only. Keys of a rule: ``name``, ``worklist`` (required), ``priority`` (STAT, URGENT,
    ROUTINE), and the conditions ``decision`` (AUTO_REPORT or DEFER), ``defer_reasons_any``,
    ``findings_any``, ``has_findings``, ``min_probability`` (label -> probability), ``sites``
    (InstitutionName), ``calling_ae_titles``, ``modalities``. The last rule must have no
    condition (the default). Shipped defaults: Pneumothorax present -> radiologist STAT;
    deferred -> radiologist ROUTINE; auto-reported with findings -> radiologist-confirm ROUTINE;
    auto-reported normal -> ai-normal ROUTINE.
``routing.critical_findings`` [["Pneumothorax"]]
    Findings whose predicted presence raises the priority to ``routing.critical_priority``
    whatever rule matched (triage may raise a priority, never lower one).
``routing.critical_priority`` ["STAT"]
    The priority floor of a critical finding.

``logging.level`` ["INFO"]
    Log level.
``logging.json`` [true]
    JSON log lines (false: human-readable console output).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "TRIAGE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KNOWN_PROVIDERS = ("TensorRT", "CUDA", "CPU")


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem with its key and source."""


@dataclass(frozen=True)
class ServerConfig:
    """gRPC listener and request limits."""

    host: str = "127.0.0.1"
    port: int = 50051
    max_message_bytes: int = 64 * 1024 * 1024
    max_stream_bytes: int = 512 * 1024 * 1024
    max_instances: int = 64
    max_in_flight: int = 64
    max_request_seconds: float = 120.0
    shutdown_grace_seconds: float = 30.0
    reflection: bool = True


@dataclass(frozen=True)
class DecodeConfig:
    """DICOM decoding limits and reduced-resolution reading."""

    max_pixels: int = 100_000_000
    reduce: bool = True
    reduce_min_scale: float = 2.0


@dataclass(frozen=True)
class EligibilityConfig:
    """Which images of a study may be read."""

    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST",)
    allow_missing_body_part: bool = True
    frontal_views: tuple[str, ...] = ("PA", "AP")
    allow_missing_view: bool = True


@dataclass(frozen=True)
class InferenceConfig:
    """ONNX Runtime providers and micro-batching."""

    providers: tuple[str, ...] = KNOWN_PROVIDERS
    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_capacity: int = 64
    streams: int = 0
    intra_op_threads: int = 0
    warmup_runs: int = 2
    trt_engine_cache: str = ""
    trt_fp16: bool = True


@dataclass(frozen=True)
class PolicyConfig:
    """Defer cost default and the bounds of a per-request override."""

    defer_cost: float | None = None
    min_defer_cost: float = 0.0
    max_defer_cost: float = 1.0
    file: str = ""


@dataclass(frozen=True)
class SecurityConfig:
    """TLS, mutual TLS and bearer tokens (all off by default)."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tokens: tuple[str, ...] = ()
    tokens_file: str = ""
    auth_health: bool = False

    @property
    def tls(self) -> bool:
        """True when a certificate and key are configured."""
        return bool(self.tls_cert and self.tls_key)

    def all_tokens(self) -> tuple[str, ...]:
        """Inline tokens plus those of ``tokens_file`` (blank lines and ``#`` comments skipped)."""
        tokens = list(self.tokens)
        if self.tokens_file:
            for line in Path(self.tokens_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    tokens.append(line)
        return tuple(tokens)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus endpoint (off when ``port`` is 0)."""

    port: int = 0
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class WorklistConfig:
    """The durable worklist store."""

    path: str = "worklist.db"
    lease_seconds: float = 900.0


@dataclass(frozen=True)
class RoutingConfig:
    """Routing rules (empty ``rules``: the shipped defaults) and critical-finding floors."""

    rules: tuple[dict[str, Any], ...] = ()
    critical_findings: tuple[str, ...] = ("Pneumothorax",)
    critical_priority: str = "STAT"

    def table_data(self) -> dict[str, Any]:
        """The ``[routing]`` table in the form :func:`parse_routing` reads."""
        data: dict[str, Any] = {
            "critical_findings": list(self.critical_findings),
            "critical_priority": self.critical_priority,
        }
        if self.rules:
            data["rules"] = [dict(r) for r in self.rules]
        return data


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and format."""

    level: str = "INFO"
    json: bool = True


@dataclass(frozen=True)
class ServiceConfig:
    """The whole configuration of ``triage serve``."""

    bundle: str = ""
    server: ServerConfig = field(default_factory=ServerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eligibility: EligibilityConfig = field(default_factory=EligibilityConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    worklist: WorklistConfig = field(default_factory=WorklistConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ---------------------------------------------------------------------------------------------
# Reading and merging


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(ServiceConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(ServiceConfig) if f.name != "bundle"}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def key_types() -> dict[str, Any]:
    """Every dotted key (``server.port``) with its Python type."""
    out: dict[str, Any] = {"bundle": str}
    for section, cls in _sections().items():
        for name, tp in _field_types(cls).items():
            out[f"{section}.{name}"] = tp
    return out


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, tp: Any, *, from_text: bool) -> Any:
    """Convert ``value`` to ``tp``; raise ValueError with a short reason."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (from_text and str(value).strip() == ""):
            return None
        return _coerce(value, inner[0], from_text=from_text)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        if from_text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError("expected a list")
        return tuple(_coerce(v, item, from_text=False) for v in value)
    if origin is dict:
        if from_text or not isinstance(value, Mapping):
            raise ValueError("expected a table (set it in the TOML file)")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            return value
        if from_text:
            try:
                return int(str(value).strip().replace("_", ""))
            except ValueError:
                pass
        raise ValueError("expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if isinstance(value, int | float):
            return float(value)
        if from_text:
            try:
                return float(str(value).strip())
            except ValueError:
                pass
        raise ValueError("expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if from_text:
            return str(value)
        raise ValueError("expected a string")
    raise ValueError(f"unsupported type {tp}")


@dataclass
class _Layer:
    """Values from one source: dotted key -> (value, given as text?, source description)."""

    values: dict[str, tuple[Any, bool, str]] = field(default_factory=dict)


def _file_layer(path: Path, errors: list[str]) -> _Layer:
    layer = _Layer()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        errors.append(f"configuration file {path} does not exist")
        return layer
    except tomllib.TOMLDecodeError as exc:
        errors.append(f"configuration file {path} is not valid TOML: {exc}")
        return layer
    known = key_types()
    sections = _sections()
    for key, value in data.items():
        if key in sections and isinstance(value, dict):
            for sub, sub_value in value.items():
                dotted = f"{key}.{sub}"
                if dotted not in known:
                    errors.append(f"{dotted} (in {path}): unknown key")
                else:
                    layer.values[dotted] = (sub_value, False, str(path))
        elif key in known and key not in sections:
            layer.values[key] = (value, False, str(path))
        else:
            errors.append(f"{key} (in {path}): unknown key or section")
    return layer


def env_name(key: str) -> str:
    """The environment variable of a dotted key: ``server.port`` -> ``TRIAGE_SERVER__PORT``."""
    return ENV_PREFIX + key.upper().replace(".", "__")


def _env_layer(env: Mapping[str, str], errors: list[str]) -> _Layer:
    layer = _Layer()
    by_name = {env_name(k): k for k in key_types()}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name in by_name:
            layer.values[by_name[name]] = (value, True, f"env {name}")
        elif "__" in name:
            errors.append(f"environment variable {name}: unknown key")
    return layer


def _flag_layer(overrides: Mapping[str, Any], errors: list[str]) -> _Layer:
    layer = _Layer()
    known = key_types()
    for key, value in overrides.items():
        if key not in known:
            errors.append(f"{key} (from the command line): unknown key")
        else:
            layer.values[key] = (value, isinstance(value, str), "command line")
    return layer


def parse_set_flags(items: Sequence[str]) -> dict[str, str]:
    """``["server.port=6000"]`` -> ``{"server.port": "6000"}``; raise ConfigError when malformed."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        out[key.strip()] = value
    return out


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServiceConfig:
    """Merge defaults < ``file`` < ``env`` (default ``os.environ``) < ``overrides``; validate.

    ``overrides`` maps dotted keys to values (strings are parsed like environment values).
    Raises :class:`ConfigError` listing every problem.
    """
    errors: list[str] = []
    layers = []
    if file is not None:
        layers.append(_file_layer(file, errors))
    layers.append(_env_layer(os.environ if env is None else env, errors))
    layers.append(_flag_layer(overrides or {}, errors))
    merged: dict[str, tuple[Any, bool, str]] = {}
    for layer in layers:
        merged.update(layer.values)
    types_by_key = key_types()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, (raw, from_text, source) in merged.items():
        try:
            values[key] = _coerce(raw, types_by_key[key], from_text=from_text)
            sources[key] = source
        except ValueError as exc:
            errors.append(f"{key} = {raw!r} (from {source}): {exc}")
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    config = build_config(values)
    problems = validate(config)
    if problems:
        lines = [
            f"{key} = {value!r} (from {sources.get(key, 'default')}): {why}"
            for key, value, why in problems
        ]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return config


def build_config(values: Mapping[str, Any]) -> ServiceConfig:
    """A :class:`ServiceConfig` from already typed dotted keys (unspecified keys: defaults)."""
    sections: dict[str, Any] = {}
    for section, cls in _sections().items():
        prefix = section + "."
        kwargs = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
        sections[section] = cls(**kwargs)
    return ServiceConfig(bundle=values.get("bundle", ""), **sections)


def with_overrides(config: ServiceConfig, **dotted: Any) -> ServiceConfig:
    """A copy of ``config`` with dotted keys replaced (``**{"server.port": 0}``)."""
    out = config
    for key, value in dotted.items():
        if "." not in key:
            out = dataclasses.replace(out, **{key: value})
            continue
        section, name = key.split(".", 1)
        out = dataclasses.replace(
            out, **{section: dataclasses.replace(getattr(out, section), **{name: value})}
        )
    return out


# ---------------------------------------------------------------------------------------------
# Validation

Problem = tuple[str, Any, str]


def is_loopback(host: str) -> bool:
    """True when ``host`` names the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate(config: ServiceConfig) -> list[Problem]:
    """Every problem as (dotted key, value, reason); empty when the configuration is valid."""
    p: list[Problem] = []

    def need(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            p.append((key, value, why))

    s, d, e, i, pol, sec, m, lg = (
        config.server,
        config.decode,
        config.eligibility,
        config.inference,
        config.policy,
        config.security,
        config.metrics,
        config.logging,
    )
    need(bool(config.bundle), "bundle", config.bundle, "a model bundle folder is required")
    need(0 <= s.port <= 65535, "server.port", s.port, "must be between 0 and 65535")
    need(bool(s.host), "server.host", s.host, "must not be empty")
    need(
        s.max_message_bytes >= 1024,
        "server.max_message_bytes",
        s.max_message_bytes,
        "must be >= 1024",
    )
    need(
        s.max_stream_bytes >= 1024,
        "server.max_stream_bytes",
        s.max_stream_bytes,
        "must be >= 1024",
    )
    need(s.max_instances >= 1, "server.max_instances", s.max_instances, "must be >= 1")
    need(s.max_in_flight >= 1, "server.max_in_flight", s.max_in_flight, "must be >= 1")
    need(
        s.max_request_seconds > 0,
        "server.max_request_seconds",
        s.max_request_seconds,
        "must be > 0",
    )
    need(
        s.shutdown_grace_seconds >= 0,
        "server.shutdown_grace_seconds",
        s.shutdown_grace_seconds,
        "must be >= 0",
    )
    need(d.max_pixels >= 1, "decode.max_pixels", d.max_pixels, "must be >= 1")
    need(d.reduce_min_scale >= 1.0, "decode.reduce_min_scale", d.reduce_min_scale, "must be >= 1.0")
    need(
        bool(e.modalities),
        "eligibility.modalities",
        e.modalities,
        "must list at least one modality",
    )
    need(
        bool(e.body_parts),
        "eligibility.body_parts",
        e.body_parts,
        "must list at least one body part",
    )
    need(
        bool(e.frontal_views),
        "eligibility.frontal_views",
        e.frontal_views,
        "must list at least one view",
    )
    unknown = [x for x in i.providers if x not in KNOWN_PROVIDERS]
    need(
        not unknown,
        "inference.providers",
        i.providers,
        f"unknown provider(s) {unknown}; use {list(KNOWN_PROVIDERS)}",
    )
    need(bool(i.providers), "inference.providers", i.providers, "must list at least one provider")
    need(1 <= i.max_batch <= 1024, "inference.max_batch", i.max_batch, "must be between 1 and 1024")
    need(
        0 <= i.max_wait_ms <= 1000,
        "inference.max_wait_ms",
        i.max_wait_ms,
        "must be between 0 and 1000",
    )
    need(i.queue_capacity >= 1, "inference.queue_capacity", i.queue_capacity, "must be >= 1")
    need(0 <= i.streams <= 64, "inference.streams", i.streams, "must be between 0 and 64")
    need(i.intra_op_threads >= 0, "inference.intra_op_threads", i.intra_op_threads, "must be >= 0")
    need(i.warmup_runs >= 0, "inference.warmup_runs", i.warmup_runs, "must be >= 0")

    def prob(key: str, v: float | None) -> None:
        if v is not None:
            need(math.isfinite(v) and 0.0 <= v <= 1.0, key, v, "must be between 0 and 1")

    prob("policy.defer_cost", pol.defer_cost)
    prob("policy.min_defer_cost", pol.min_defer_cost)
    prob("policy.max_defer_cost", pol.max_defer_cost)
    need(
        pol.min_defer_cost <= pol.max_defer_cost,
        "policy.min_defer_cost",
        pol.min_defer_cost,
        f"must not exceed policy.max_defer_cost ({pol.max_defer_cost})",
    )
    if pol.defer_cost is not None:
        need(
            pol.min_defer_cost <= pol.defer_cost <= pol.max_defer_cost,
            "policy.defer_cost",
            pol.defer_cost,
            f"must lie within [policy.min_defer_cost, policy.max_defer_cost] = "
            f"[{pol.min_defer_cost}, {pol.max_defer_cost}]",
        )
    need(
        bool(sec.tls_cert) == bool(sec.tls_key),
        "security.tls_key" if sec.tls_cert else "security.tls_cert",
        sec.tls_key or sec.tls_cert,
        "security.tls_cert and security.tls_key must be set together",
    )
    need(
        not sec.tls_client_ca or sec.tls,
        "security.tls_client_ca",
        sec.tls_client_ca,
        "mutual TLS needs security.tls_cert and security.tls_key",
    )
    for key in ("tls_cert", "tls_key", "tls_client_ca", "tokens_file"):
        value = getattr(sec, key)
        need(not value or Path(value).is_file(), f"security.{key}", value, "file does not exist")
    need(
        all(t.strip() == t and t for t in sec.tokens),
        "security.tokens",
        "<redacted>",
        "tokens must be non-empty without spaces",
    )
    need(0 <= m.port <= 65535, "metrics.port", m.port, "must be between 0 and 65535 (0: off)")
    need(
        lg.level.upper() in LOG_LEVELS,
        "logging.level",
        lg.level,
        f"must be one of {list(LOG_LEVELS)}",
    )
    w = config.worklist
    need(w.lease_seconds > 0, "worklist.lease_seconds", w.lease_seconds, "must be > 0")
    try:
        from service.stages.routing import parse_routing

        parse_routing(config.routing.table_data())
    except ValueError as exc:
        need(False, "routing.rules", "[[routing.rules]]", str(exc))
    return p
