"""Service configuration: a dataclass tree read from TOML, environment variables and CLI flags.

Precedence: command-line flags > environment variables > the TOML file > the defaults.
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

Each key is declared once, with its default, its checks and its documentation, by
:func:`knob` beside its dataclass field; :func:`validate` applies those checks plus the few
rules that span fields, and :func:`reference_markdown` renders the key table of the README
(``python -m triage_tools.config_table`` rewrites it there).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "TRIAGE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KNOWN_PROVIDERS = ("TensorRT", "CUDA", "CPU")
BACKENDS = ("onnxruntime", "kserve")


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem with its key and source."""


# ---------------------------------------------------------------------------------------------
# Keys: a default, checks and a doc beside each field

Check = Callable[[Any], str | None]
"""A field check: the reason a value is refused, or None when it is fine."""

_KNOB = "triage.knob"


@dataclass(frozen=True)
class Knob:
    """What :func:`knob` attaches to a field: its doc, its checks and how its default reads."""

    doc: str
    checks: tuple[Check, ...] = ()
    shown: str | None = None
    secret: bool = False


def knob(
    default: Any, doc: str, *checks: Check, shown: str | None = None, secret: bool = False
) -> Any:
    """A dataclass field with ``default``, documented by ``doc`` and validated by ``checks``.

    ``shown`` replaces the rendered default in the reference table (``"required"``); a
    ``secret`` value is reported as ``<redacted>`` in validation problems.
    """
    info = Knob(doc=doc, checks=checks, shown=shown, secret=secret)
    return field(default=default, metadata={_KNOB: info})


def between(low: float, high: float, hint: str = "") -> Check:
    """Refuse a value outside ``[low, high]``."""
    suffix = f" ({hint})" if hint else ""

    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}{suffix}"

    return check


def at_least(low: float) -> Check:
    """Refuse a value below ``low``."""

    def check(value: Any) -> str | None:
        return None if value >= low else f"must be >= {low}"

    return check


def above(low: float) -> Check:
    """Refuse a value not strictly above ``low``."""

    def check(value: Any) -> str | None:
        return None if value > low else f"must be > {low}"

    return check


def listed(what: str) -> Check:
    """Refuse an empty list (``what`` names one item: ``"modality"``)."""

    def check(value: Any) -> str | None:
        return None if value else f"must list at least one {what}"

    return check


def subset_of(allowed: Sequence[str], what: str) -> Check:
    """Refuse a list with an item outside ``allowed``."""

    def check(value: Any) -> str | None:
        unknown = [x for x in value if x not in allowed]
        return f"unknown {what}(s) {unknown}; use {list(allowed)}" if unknown else None

    return check


def one_of(choices: Sequence[str], *, fold_case: bool = False) -> Check:
    """Refuse a value outside ``choices`` (upper-cased first when ``fold_case``)."""

    def check(value: Any) -> str | None:
        text = value.upper() if fold_case else value
        return None if text in choices else f"must be one of {list(choices)}"

    return check


def required(reason: str) -> Check:
    """Refuse an empty value with ``reason``."""

    def check(value: Any) -> str | None:
        return None if value else reason

    return check


non_empty: Check = required("must not be empty")


def probability(value: Any) -> str | None:
    """Refuse a number outside [0, 1] (None, an unset optional, passes)."""
    if value is None or (math.isfinite(value) and 0.0 <= value <= 1.0):
        return None
    return "must be between 0 and 1"


def file_exists(value: Any) -> str | None:
    """Refuse a path that names no file (empty, unset, passes)."""
    return None if not value or Path(value).is_file() else "file does not exist"


def clean_tokens(value: Any) -> str | None:
    """Refuse an empty token or one with surrounding spaces."""
    ok = all(t.strip() == t and t for t in value)
    return None if ok else "tokens must be non-empty without spaces"


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class ServerConfig:
    """gRPC listener and request limits."""

    host: str = knob(
        "127.0.0.1",
        "Address to bind. Loopback by default; binding elsewhere without TLS logs a warning.",
        non_empty,
    )
    port: int = knob(50051, "TCP port; 0 picks a free port (tests).", between(0, 65535))
    max_message_bytes: int = knob(
        64 * 1024 * 1024,
        "Largest single gRPC message accepted (a unary study, or one chunk).",
        at_least(1024),
        shown="`67108864` (64 MiB)",
    )
    max_stream_bytes: int = knob(
        512 * 1024 * 1024,
        "Largest total of all instances of one study (unary or streamed).",
        at_least(1024),
        shown="`536870912` (512 MiB)",
    )
    max_instances: int = knob(64, "Most DICOM instances in one study.", at_least(1))
    max_in_flight: int = knob(
        64,
        "Triage calls handled at once; the next one gets RESOURCE_EXHAUSTED.",
        at_least(1),
    )
    max_request_seconds: float = knob(
        120.0, "Deadline applied when the client sets none (or a longer one).", above(0)
    )
    shutdown_grace_seconds: float = knob(
        30.0,
        "On SIGTERM: time given to in-flight calls before they are cancelled.",
        at_least(0),
    )
    reflection: bool = knob(True, "Serve gRPC server reflection.")


@dataclass(frozen=True)
class DecodeConfig:
    """DICOM decoding limits and reduced-resolution reading."""

    max_pixels: int = knob(
        40_000_000,
        "Largest Rows x Columns x SamplesPerPixel x NumberOfFrames of an instance, checked from "
        "the header before any pixel buffer is allocated. The model reads S x S pixels; the "
        "largest chest detectors are about 4,300 x 4,300 (18.5 M), so 40 M leaves twice that "
        "and refuses decompression bombs that declare more.",
        at_least(1),
    )
    max_aspect_ratio: float = knob(
        4.0,
        "Largest ratio of the longer image side to the shorter one of an image above 1 M "
        "pixels, checked from the header (chest films are about 1.2; a header declaring "
        "255 x 65535 is a decompression bomb).",
        at_least(1.0),
    )
    max_compression_ratio: float = knob(
        250.0,
        "Largest ratio of the decoded size an image above 1 M pixels declares to the bytes of "
        "its compressed pixel data (JPEG, JPEG-LS, JPEG 2000, RLE), checked from the header: "
        "radiographs compress about 2:1 lossless and 10-50:1 lossy; a 32 KB JPEG declaring "
        "6000 x 6000 pixels (1,100:1) is a decompression bomb.",
        at_least(1.0),
    )
    max_inflated_bytes: int = knob(
        256 * 1024 * 1024,
        "Largest data set a Deflated Explicit VR file may inflate to; the stream is inflated in "
        "steps and refused as soon as it passes this, before anything is parsed.",
        at_least(1024),
        shown="`268435456` (256 MiB)",
    )
    workers: int = knob(
        0,
        "Decode worker processes: every instance is parsed and its pixel data decoded there, "
        "under the memory and time limits below, so a decoder that crashes, hangs or bloats on "
        "hostile data is killed and replaced without touching the server (0: automatic, one "
        "per usable core, at most 4).",
        between(0, 64),
    )
    worker_memory_mb: int = knob(
        768,
        "Address-space limit of a decode worker (RLIMIT_AS), libraries and arenas included "
        "(about 200 MiB); a decode that needs more gets INVALID_ARGUMENT naming the limit.",
        at_least(256),
    )
    worker_seconds: float = knob(
        1.75,
        "Wall-clock limit of one study's decode in a worker, the wait for a free worker "
        "included; past it the worker is killed and replaced and the call gets INVALID_ARGUMENT "
        "naming the limit (a shorter client deadline gives DEADLINE_EXCEEDED). 1.75 s leaves "
        "room for reading the stream and answering, so a hostile input is answered within 2 s.",
        above(0),
    )
    worker_max_tasks: int = knob(
        1000,
        "Studies a decode worker decodes before it is replaced by a fresh one (memory it holds "
        "goes back to the system).",
        at_least(1),
    )
    in_process: bool = knob(
        False,
        "Decode in the request threads instead of the worker processes: no memory or time "
        "limit and no crash isolation. Only for trusted input (benchmarks of the floor, "
        "debugging).",
    )
    reduce: bool = knob(
        True,
        "Read images at reduced resolution when the model input allows it: JPEG 2000 at a lower "
        "wavelet resolution level (most of the codestream is never decoded), other encodings by "
        "averaging k x k blocks of stored values right after decoding. Off: every image is "
        "mapped to display values at full resolution (bit-identical results across lossless "
        "encodings).",
    )
    reduce_min_scale: float = knob(
        2.0,
        "The reduced image keeps at least this multiple of the model input size on its short side.",
        at_least(1.0),
    )


@dataclass(frozen=True)
class EligibilityConfig:
    """Which images of a study may be read."""

    modalities: tuple[str, ...] = knob(
        ("CR", "DX"), "Accepted Modality values.", listed("modality")
    )
    body_parts: tuple[str, ...] = knob(
        ("CHEST",), "Accepted BodyPartExamined values.", listed("body part")
    )
    allow_missing_body_part: bool = knob(True, "Accept images without BodyPartExamined (logged).")
    frontal_views: tuple[str, ...] = knob(
        ("PA", "AP"),
        "ViewPosition values that are frontal views, in order of preference.",
        listed("view"),
    )
    allow_missing_view: bool = knob(
        True,
        "Accept an image without ViewPosition as a frontal view (ranked after the listed views).",
    )


@dataclass(frozen=True)
class InferenceConfig:
    """Where the model runs (in-process ONNX Runtime or a remote KServe v2 server), batching."""

    backend: str = knob(
        "onnxruntime",
        "Where the bundle's graph runs: `onnxruntime` (in this process, on `inference.providers`) "
        "or `kserve` (a remote KServe v2 / Open Inference Protocol server such as Triton, at "
        "`inference.kserve_address`; its model's metadata is checked against the bundle at "
        "start-up and readiness follows its ModelReady). The bundle still defines labels, "
        "thresholds and preprocessing either way.",
        one_of(BACKENDS),
    )
    providers: tuple[str, ...] = knob(
        KNOWN_PROVIDERS,
        "ONNX Runtime execution providers in order of preference; only those that load are used.",
        subset_of(KNOWN_PROVIDERS, "provider"),
        listed("provider"),
    )
    max_batch: int = knob(8, "Largest micro-batch.", between(1, 1024))
    max_wait_ms: float = knob(
        5.0,
        "How long the batcher waits for more requests after the first one of a batch.",
        between(0, 1000),
    )
    queue_capacity: int = knob(
        64,
        "Images waiting for the batcher; beyond it a request gets RESOURCE_EXHAUSTED.",
        at_least(1),
    )
    streams: int = knob(
        0,
        "Batches that run at the same time, each in its own thread on the one ONNX Runtime "
        "session (0: automatic, 1 on a GPU provider and `min(4, cores)` on the CPU). On a CPU, "
        "several single-threaded batches keep every core busy while decoding takes one away, "
        "where one batch spread over all cores waits for its slowest part: on 2 cores, "
        "2 streams of 1 thread served uncompressed RG1 studies at concurrency 8 about 1.2 times "
        "faster than 1 stream of 2 threads (15.3 against 12.9 studies/s), at the price of a lone "
        "request's latency (p50 116 against 91 ms at concurrency 1). Set 1 where single-study "
        "latency matters more. With `inference.backend = kserve`: micro-batches in flight to the "
        "server at once (0: 4).",
        between(0, 64),
    )
    intra_op_threads: int = knob(
        0,
        "ONNX Runtime intra-op threads per stream (0: automatic, `cores // streams` on the CPU, "
        "ONNX Runtime's default on a GPU provider).",
        at_least(0),
    )
    warmup_runs: int = knob(
        2, "Batches run at start-up before the service reports SERVING.", at_least(0)
    )
    trt_engine_cache: str = knob(
        "",
        "Folder where ONNX Runtime's TensorRT provider keeps the engines it builds (the first "
        "start on a new GPU builds them, which takes minutes for DenseNet-121); empty: no cache.",
    )
    trt_fp16: bool = knob(True, "Let the TensorRT provider use FP16 kernels.")
    kserve_address: str = knob(
        "",
        "`HOST:PORT` of the KServe v2 gRPC endpoint (Triton's port 8001) when `inference.backend` "
        "is `kserve`.",
    )
    kserve_model: str = knob(
        "cxr_triage",
        "Model name on the KServe server (`triage export triton --model-name`).",
        non_empty,
    )
    kserve_model_version: str = knob(
        "", "Model version on the KServe server; empty: the server's version policy chooses."
    )
    kserve_tls: bool = knob(
        False,
        "Talk TLS to the KServe server (verified against `inference.kserve_tls_ca`, else the "
        "system's CA roots).",
    )
    kserve_tls_ca: str = knob(
        "", "PEM CA bundle that verifies the KServe server's certificate.", file_exists
    )
    kserve_tls_cert: str = knob(
        "",
        "PEM client certificate chain for mutual TLS with the KServe server (with "
        "`inference.kserve_tls_key`).",
        file_exists,
    )
    kserve_tls_key: str = knob("", "PEM key of `inference.kserve_tls_cert`.", file_exists)
    kserve_timeout_seconds: float = knob(
        10.0,
        "Longest wait for one remote batch (ModelInfer) or check; past it the batch's requests "
        "get UNAVAILABLE (a shorter client deadline gives DEADLINE_EXCEEDED first).",
        above(0),
    )
    kserve_health_seconds: float = knob(
        1.0,
        "How often the remote model's readiness (ModelReady) is polled; readiness goes "
        "NOT_SERVING when it fails and SERVING again when it answers ready (a failed batch "
        "flips it at once).",
        above(0),
    )
    kserve_startup_seconds: float = knob(
        300.0,
        "How long start-up waits for an unreachable or not-ready remote model (liveness "
        "SERVING, readiness NOT_SERVING meanwhile) before the server gives up and exits; a "
        "remote model whose metadata differs from the bundle is refused at once.",
        above(0),
    )


@dataclass(frozen=True)
class PolicyConfig:
    """Defer cost default and the bounds of a per-request override."""

    defer_cost: float | None = knob(
        None,
        "Defer cost when the request sets none; within "
        "[`policy.min_defer_cost`, `policy.max_defer_cost`].",
        probability,
        shown="unset: the bundle's default",
    )
    min_defer_cost: float = knob(
        0.0,
        "Lower bound of a per-request override (outside: INVALID_ARGUMENT).",
        probability,
    )
    max_defer_cost: float | None = knob(
        None,
        "Upper bound of a per-request override (outside: INVALID_ARGUMENT). Unset: the cost in "
        "force (the calibrated policy's, `policy.defer_cost` or the bundle's), so a client may "
        "defer more but never auto-report more than the deployment does. Setting it above that "
        "cost lets clients switch deferral down; the server logs `defer_cost_bounds_widened` at "
        "start-up and on every policy reload.",
        probability,
        shown="unset: the cost in force",
    )
    file: str = knob(
        "",
        "Calibrated policy file (`triage calibrate`); loaded at start-up, reloaded on SIGHUP.",
    )


@dataclass(frozen=True)
class SecurityConfig:
    """TLS, mutual TLS and bearer tokens (all off by default)."""

    tls_cert: str = knob(
        "",
        "PEM server certificate chain; set with `security.tls_key` it turns TLS on.",
        file_exists,
    )
    tls_key: str = knob(
        "",
        "PEM key of `security.tls_cert`; both set turns TLS on.",
        file_exists,
    )
    tls_client_ca: str = knob(
        "",
        "PEM CA bundle; set (with TLS) it requires and verifies client certificates (mutual TLS).",
        file_exists,
    )
    tokens: tuple[str, ...] = knob(
        (),
        "Accepted bearer tokens (`authorization: Bearer <token>` metadata).",
        clean_tokens,
        secret=True,
    )
    tokens_file: str = knob(
        "",
        "File of accepted tokens (added to `security.tokens`), one per line: `TOKEN`, or "
        "`NAME TOKEN` to name its holder (results and the audit record callers by that name; "
        "an unnamed token by `#` and 8 hex digits of its sha256).",
        file_exists,
    )
    auth_health: bool = knob(
        False,
        "Require the token for `grpc.health.v1` too (off: orchestrator probes stay open).",
    )

    @property
    def tls(self) -> bool:
        """True when a certificate and key are configured."""
        return bool(self.tls_cert and self.tls_key)

    def all_tokens(self) -> tuple[str, ...]:
        """Inline tokens plus those of ``tokens_file`` (blank lines and ``#`` comments skipped)."""
        return tuple(token for _, token in self.named_tokens())

    def named_tokens(self) -> tuple[tuple[str, str], ...]:
        """``(name, token)`` of every accepted token; the name is "" for an unnamed one."""
        named = [("", token) for token in self.tokens]
        if self.tokens_file:
            lines = Path(self.tokens_file).read_text().splitlines()
            for number, line in enumerate(lines, start=1):
                fields = line.split()
                if not fields or fields[0].startswith("#"):
                    continue
                if len(fields) > 2:
                    raise ValueError(
                        f"security.tokens_file {self.tokens_file}:{number}: expected TOKEN or "
                        "NAME TOKEN"
                    )
                named.append(("", fields[0]) if len(fields) == 1 else (fields[0], fields[1]))
        return tuple(named)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus endpoint (off when ``port`` is 0)."""

    port: int = knob(
        0, "Prometheus endpoint port; 0 turns metrics off.", between(0, 65535, "0: off")
    )
    host: str = knob("127.0.0.1", "Prometheus endpoint address.")


def postgres_url(value: Any) -> str | None:
    """Refuse a non-empty ``worklist.url`` that is not a PostgreSQL URL."""
    if not value or str(value).startswith(("postgresql://", "postgres://")):
        return None
    return "must be a postgresql://USER:PASSWORD@HOST:PORT/DATABASE URL (or empty)"


@dataclass(frozen=True)
class WorklistConfig:
    """The durable worklist store."""

    path: str = knob(
        "worklist.db",
        "SQLite file of the worklist (WAL, synchronous FULL); a result is acknowledged to the "
        "client only after it is committed there. The same study sent again with the same "
        "decision inputs (bundle, policy version, defer cost) returns the stored result "
        "(`replayed`) and adds nothing; other inputs re-triage it (see the README's worklist "
        "section). Migrated to the current schema version at start-up. An empty path turns "
        "the worklist off (results are neither stored nor idempotent: for benchmarks and tests "
        "of the triage path only; a warning is logged at start-up).",
    )
    url: str = knob(
        "",
        "PostgreSQL worklist shared by several replicas (`postgresql://USER:PASSWORD@HOST:PORT/"
        "DB`; needs the `postgres` extra); when set it replaces `path`. Same semantics as "
        "SQLite; claims use `FOR UPDATE SKIP LOCKED`, leases the database clock, Watch "
        "LISTEN/NOTIFY; migrated at start-up (a newer schema is refused). Pass it from a secret "
        "(`TRIAGE_WORKLIST__URL`): the password is never logged.",
        postgres_url,
        secret=True,
    )
    lease_seconds: float = knob(
        900.0, "Default lease of a Claim; an expired lease returns the item to QUEUED.", above(0)
    )


@dataclass(frozen=True)
class RoutingConfig:
    """Routing rules (empty ``rules``: the shipped defaults) and critical-finding floors."""

    rules: tuple[dict[str, Any], ...] = knob(
        (),
        "Ordered routing rules, first match wins, as a TOML array of tables "
        "(`[[routing.rules]]`); file only. Keys of a rule: `name`, `worklist` (required), "
        "`priority` (STAT, URGENT, ROUTINE), and the conditions `decision` (AUTO_REPORT or "
        "DEFER), `defer_reasons_any`, `findings_any`, `has_findings`, `min_probability` "
        "(label -> probability), `sites` (InstitutionName), `calling_ae_titles`, `modalities`. "
        "The last rule must have no condition (the default). Shipped defaults: Pneumothorax "
        "present -> radiologist STAT; deferred -> radiologist ROUTINE; auto-reported with "
        "findings -> radiologist-confirm ROUTINE; auto-reported normal -> ai-normal ROUTINE.",
        shown="the shipped defaults",
    )
    critical_findings: tuple[str, ...] = knob(
        ("Pneumothorax",),
        "Findings whose predicted presence raises the priority to `routing.critical_priority` "
        "whatever rule matched (triage may raise a priority, never lower one).",
    )
    critical_priority: str = knob("STAT", "The priority floor of a critical finding.")

    def table_data(self) -> dict[str, Any]:
        """The ``[routing]`` table in the form :func:`parse_routing` reads."""
        data: dict[str, Any] = {
            "critical_findings": list(self.critical_findings),
            "critical_priority": self.critical_priority,
        }
        if self.rules:
            data["rules"] = [dict(r) for r in self.rules]
        return data


#: The transfer syntaxes the decoder reads, in the Storage SCP's order of preference (it
#: accepts the first of these a proposed context offers): lossless compressed (no conversion by
#: the sender), then uncompressed, then lossy (only when the sender offers nothing else).
DECODABLE_SYNTAXES = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)
#: CR, DX for presentation, DX for processing.
RADIOGRAPH_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
)
#: Transfer syntaxes the result objects may be written in.
OBJECT_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90")


def uid_list(what: str) -> Check:
    """Refuse an empty list or an item that is not a UID (digits and dots)."""

    def check(value: Any) -> str | None:
        if not value:
            return f"must list at least one {what}"
        bad = [v for v in value if not v or not all(c.isdigit() or c == "." for c in v)]
        return f"not a UID: {bad}" if bad else None

    return check


def ae_title(value: Any) -> str | None:
    """Refuse an AE title that is empty, longer than 16 characters or has a backslash."""
    ok = bool(value.strip()) and len(value) <= 16 and "\\" not in value
    return None if ok else "must be 1 to 16 characters without a backslash"


@dataclass(frozen=True)
class DicomConfig:
    """The DICOM front door (a Storage SCP beside gRPC) and where DICOM results are sent."""

    port: int = knob(
        0,
        "Port of the DICOM Storage SCP (C-STORE intake, C-ECHO); 0 turns it off.",
        between(0, 65535, "0: off"),
    )
    host: str = knob(
        "127.0.0.1", "Address the SCP binds (loopback by default, like `server.host`).", non_empty
    )
    ae_title: str = knob(
        "CXRTRIAGE",
        "This deployment's AE title: the called AE title the SCP answers to, and the calling "
        "AE title towards destinations (unless a destination sets its own).",
        ae_title,
    )
    allowed_callers: tuple[str, ...] = knob(
        (),
        "Who may associate: entries `TITLE` (that calling AE title from any host) or "
        "`TITLE@HOST` (HOST an address or a CIDR network, e.g. `CR1@10.1.2.0/24`). An unknown "
        "calling AE title is rejected at association (A-ASSOCIATE-RJ, calling AE title not "
        "recognised), a host no entry names is refused at connect, a known title from another "
        "host is aborted right after association. Empty: anyone on the network (logged as a "
        "warning at start-up).",
    )
    sop_classes: tuple[str, ...] = knob(
        RADIOGRAPH_STORAGE,
        "Storage SOP classes accepted (UIDs): CR, DX for presentation, DX for processing. "
        "Verification (C-ECHO) is always accepted. Add e.g. CT Image Storage "
        "(`1.2.840.10008.5.1.4.1.1.2`) where a forwarding rule sends whole studies: such "
        "instances are stored, not triaged, and counted as not eligible.",
        uid_list("SOP class"),
    )
    transfer_syntaxes: tuple[str, ...] = knob(
        DECODABLE_SYNTAXES,
        "Transfer syntaxes accepted (UIDs), in order of preference (the first one a proposed "
        "context offers is accepted): those the decoder reads, lossless compressed first (the "
        "sender need not convert), then uncompressed, then lossy (JPEG baseline and extended, "
        "JPEG-LS near-lossless, JPEG 2000) only when nothing else is offered.",
        uid_list("transfer syntax"),
    )
    max_associations: int = knob(
        8, "Associations open at once; the next is rejected (local limit exceeded).", at_least(1)
    )
    max_pdu: int = knob(
        116794,
        "Largest P-DATA PDU the SCP receives (bytes; dcmtk's default; 0: unlimited).",
        at_least(0),
    )
    timeout_seconds: float = knob(
        30.0,
        "ACSE, DIMSE and network timeout of an association (a silent peer is dropped), and the "
        "connect and response timeout of the sender.",
        above(0),
    )
    quiet_seconds: float = knob(
        10.0,
        "A study is complete when no instance of it arrived for this long (Orthanc calls it "
        "StableAge); then it is triaged.",
        above(0),
    )
    complete_on_release: bool = knob(
        False,
        "Also treat a study as complete as soon as the association that carried it is released "
        "(a modality sending one study per association); the quiet period still applies to "
        "studies split over several associations.",
    )
    spool_dir: str = knob(
        "dicom-spool",
        "Folder where received instances are written (fsync'd) before C-STORE answers Success; "
        "studies spooled but not triaged (a crash) are triaged at start-up.",
        non_empty,
    )
    max_study_bytes: int = knob(
        512 * 1024 * 1024,
        "Largest total of one study's spooled instances; an instance past it gets 0xA700 "
        "(out of resources).",
        at_least(1024),
        shown="`536870912` (512 MiB)",
    )
    max_study_instances: int = knob(
        64, "Most instances of one study; the next gets 0xA700.", at_least(1)
    )
    max_spool_bytes: int = knob(
        4 * 1024 * 1024 * 1024,
        "Largest total of the spool; an instance past it gets 0xA700 until studies are "
        "triaged and their instances removed.",
        at_least(1024),
        shown="`4294967296` (4 GiB)",
    )
    triage_workers: int = knob(
        2,
        "Complete studies triaged at once (each holds a decode worker while decoding).",
        between(1, 64),
    )
    retry_seconds: float = knob(
        5.0,
        "When triaging a study fails for a passing reason (overload, model not ready), it is "
        "tried again after this long (kept in the spool meanwhile).",
        above(0),
    )
    max_failed_attempts: int = knob(
        5,
        "A study whose triage fails for an unexpected reason (a bug, a corrupt spool file) is "
        "tried this many times (``retry_seconds`` apart); then its files are moved to "
        "``<spool_dir>/quarantine/`` for an operator, never deleted, and the failure is logged "
        "and counted (outcome quarantined).",
        between(1, 1000),
    )
    sc_transfer_syntax: str = knob(
        "1.2.840.10008.1.2.5",
        "Transfer syntax of the Secondary Capture overlays: RLE Lossless, or Explicit VR Little "
        "Endian `1.2.840.10008.1.2.1` for receivers that take no compressed data.",
        one_of(OBJECT_SYNTAXES),
    )
    seg_transfer_syntax: str = knob(
        "1.2.840.10008.1.2.4.90",
        "Transfer syntax of the Segmentation: JPEG 2000 Lossless (about 1 MB for an RG1-sized "
        "image with four segments, 14 MB uncompressed), or RLE Lossless `1.2.840.10008.1.2.5` "
        "or Explicit VR Little Endian `1.2.840.10008.1.2.1` for receivers without JPEG 2000.",
        one_of(OBJECT_SYNTAXES),
    )
    destinations: tuple[dict[str, Any], ...] = knob(
        (),
        "Where DICOM results are sent, as a TOML array of tables (`[[dicom.destinations]]`); "
        "file only. Keys: `name`, `ae_title`, `host`, `port` (required), `kinds` (of SR, SC, "
        "SEG, KOS; default SR, SC, SEG), `sources` (results of studies from `dicom`, `grpc` or "
        "both, the default), `calling_ae_title`, `tls`, `tls_ca`, `tls_cert`, `tls_key`. Each "
        "object gets one outbox row per destination, written with the result.",
        shown="none",
    )
    send_backoff_seconds: float = knob(
        2.0,
        "Wait after a destination's first failed attempt; doubled after each further one, up to "
        "`dicom.send_backoff_max_seconds`.",
        above(0),
    )
    send_backoff_max_seconds: float = knob(
        300.0, "Longest wait between attempts to send one object.", above(0)
    )
    send_max_attempts: int = knob(
        0,
        "Attempts after which an object is marked FAILED and no longer sent (0: never give "
        "up; a PACS down for hours gets everything once it is back).",
        at_least(0),
    )
    send_lease_seconds: float = knob(
        60.0,
        "How long a sender holds the outbox rows it is sending; rows of a sender that died "
        "(SIGKILL) are sent again after it, with the same SOP Instance UIDs.",
        above(0),
    )
    keep_sent_objects: bool = knob(
        False,
        "Keep the bytes of objects every destination acknowledged (off: they are dropped "
        "from the worklist database once sent; the outbox rows stay).",
    )

    @property
    def enabled(self) -> bool:
        """True when the Storage SCP runs."""
        return self.port != 0


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and format."""

    level: str = knob("INFO", "Log level.", one_of(LOG_LEVELS, fold_case=True))
    json: bool = knob(True, "JSON log lines (false: human-readable console output).")


@dataclass(frozen=True)
class ExplainConfig:
    """Counterfactual explanations of deferred studies (made off the request path)."""

    enabled: bool = knob(
        False,
        "Queue a Latent Shift counterfactual job for every deferred result, in the result's "
        "own transaction: the model input the classifier read (4 x S^2 bytes) and the findings "
        "to explain, plus the source header where a destination takes Secondary Captures. The "
        "separate `triage explain-worker` process (train extra) makes them; clients fetch them "
        "with `Worklist.GetExplanation`. Nothing waits for it: triage is the same with or "
        "without a worker.",
    )
    max_findings: int = knob(
        2,
        "Findings explained per deferred study: the present ones, most probable first; a study "
        "with none present gets its most probable finding.",
        between(1, 64),
    )


@dataclass(frozen=True)
class ServiceConfig:
    """The whole configuration of ``triage serve``."""

    bundle: str = knob(
        "",
        "Model bundle folder (`manifest.json` + `triage.onnx`); verified by sha256 at start-up.",
        required("a model bundle folder is required"),
        shown="required",
    )
    server: ServerConfig = field(default_factory=ServerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eligibility: EligibilityConfig = field(default_factory=EligibilityConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    worklist: WorklistConfig = field(default_factory=WorklistConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ---------------------------------------------------------------------------------------------
# Reading and merging


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(ServiceConfig)
    fields = dataclasses.fields(ServiceConfig)
    return {f.name: hints[f.name] for f in fields if _KNOB not in f.metadata}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def key_types() -> dict[str, Any]:
    """Every dotted key (``server.port``) with its Python type."""
    hints = typing.get_type_hints(ServiceConfig)
    sections = _sections()
    out: dict[str, Any] = {n: tp for n, tp in hints.items() if n not in sections}
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
REDACTED = "<redacted>"


def is_loopback(host: str) -> bool:
    """True when ``host`` names the loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def knob_of(f: dataclasses.Field[Any]) -> Knob:
    """The :class:`Knob` declared on a field; TypeError when it was declared without one."""
    info = f.metadata.get(_KNOB)
    if not isinstance(info, Knob):
        raise TypeError(f"configuration field {f.name!r} is not declared with knob(...)")
    return info


def knobs() -> Iterator[tuple[str, dataclasses.Field[Any], Knob]]:
    """Every key in order (top-level keys, then each section's): (dotted key, field, knob)."""
    sections = _sections()
    for top in dataclasses.fields(ServiceConfig):
        if top.name not in sections:
            yield top.name, top, knob_of(top)
            continue
        for f in dataclasses.fields(sections[top.name]):
            yield f"{top.name}.{f.name}", f, knob_of(f)


def _value(config: ServiceConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _field_problems(config: ServiceConfig) -> Iterator[Problem]:
    for key, _, info in knobs():
        value = _value(config, key)
        for check in info.checks:
            reason = check(value)
            if reason is not None:
                yield key, REDACTED if info.secret else value, reason


def _defer_cost_rules(policy: PolicyConfig) -> Iterator[Problem]:
    low, high = policy.min_defer_cost, policy.max_defer_cost
    if high is not None and not low <= high:
        yield "policy.min_defer_cost", low, f"must not exceed policy.max_defer_cost ({high})"
    cost = policy.defer_cost
    if cost is not None and not low <= cost <= (cost if high is None else high):
        if high is None:
            yield "policy.defer_cost", cost, f"must not be below policy.min_defer_cost ({low})"
        else:
            bounds = f"[policy.min_defer_cost, policy.max_defer_cost] = [{low}, {high}]"
            yield "policy.defer_cost", cost, f"must lie within {bounds}"


def _tls_rules(security: SecurityConfig) -> Iterator[Problem]:
    if bool(security.tls_cert) != bool(security.tls_key):
        key = "security.tls_key" if security.tls_cert else "security.tls_cert"
        value = security.tls_key or security.tls_cert
        yield key, value, "security.tls_cert and security.tls_key must be set together"
    if security.tls_client_ca and not security.tls:
        reason = "mutual TLS needs security.tls_cert and security.tls_key"
        yield "security.tls_client_ca", security.tls_client_ca, reason


def _kserve_rules(inference: InferenceConfig) -> Iterator[Problem]:
    if inference.backend == "kserve" and not inference.kserve_address:
        yield "inference.kserve_address", "", "required when inference.backend is kserve"
    cert, key = inference.kserve_tls_cert, inference.kserve_tls_key
    if bool(cert) != bool(key):
        name = "inference.kserve_tls_key" if cert else "inference.kserve_tls_cert"
        yield name, key or cert, "kserve_tls_cert and kserve_tls_key must be set together"
    for name in ("kserve_tls_ca", "kserve_tls_cert"):
        value = getattr(inference, name)
        if value and not inference.kserve_tls:
            yield f"inference.{name}", value, "needs inference.kserve_tls = true"


def _routing_rules(routing: RoutingConfig) -> Iterator[Problem]:
    from service.stages.routing import parse_routing

    try:
        parse_routing(routing.table_data())
    except ValueError as exc:
        yield "routing.rules", "[[routing.rules]]", str(exc)


def _dicom_rules(dicom: DicomConfig) -> Iterator[Problem]:
    from service.dicom.callers import parse_callers
    from service.dicom.destinations import parse_destinations

    try:
        parse_destinations(dicom.destinations)
    except ValueError as exc:
        yield "dicom.destinations", "[[dicom.destinations]]", str(exc)
    try:
        parse_callers(dicom.allowed_callers)
    except ValueError as exc:
        yield "dicom.allowed_callers", list(dicom.allowed_callers), str(exc)


def validate(config: ServiceConfig) -> list[Problem]:
    """Every problem as (dotted key, value, reason); empty when the configuration is valid.

    The checks of every field, then the rules that span fields: the defer-cost bounds, TLS
    certificate and key together (and mutual TLS only with TLS), the KServe backend's address and
    TLS files, the routing rules, and the DICOM destinations and allowed callers.
    """
    return [
        *_field_problems(config),
        *_defer_cost_rules(config.policy),
        *_tls_rules(config.security),
        *_kserve_rules(config.inference),
        *_routing_rules(config.routing),
        *_dicom_rules(config.dicom),
    ]


# ---------------------------------------------------------------------------------------------
# Reference


def _shown_default(f: dataclasses.Field[Any], info: Knob) -> str:
    if info.shown is not None:
        return info.shown
    default = f.default
    return "`" + json.dumps(list(default) if isinstance(default, tuple) else default) + "`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _env_cell(key: str, tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict or any(typing.get_origin(a) is dict for a in args):
        return "none (TOML file only)"
    return f"`{env_name(key)}`"


def reference_markdown() -> str:
    """A Markdown table of every key: key, environment variable, default and doc, in order."""
    lines = [
        "| key | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    types_by_key = key_types()
    for key, f, info in knobs():
        env = _env_cell(key, types_by_key[key])
        cells = (f"`{key}`", env, _shown_default(f, info), info.doc)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
