"""Client helpers shared by ``triage submit`` and ``triage bench serve``.

- :func:`open_channel`: insecure, TLS (``tls_ca``) or mutual TLS (plus ``tls_cert``/``tls_key``).
- :func:`group_by_study`: files grouped by StudyInstanceUID, reading headers only.
- :func:`triage_study`: the unary call for small studies, TriageStream in ~1 MiB chunks otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc

CHUNK_BYTES = 1 << 20
#: Studies up to this size go in one unary message.
UNARY_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class ChannelOptions:
    """How to reach the server."""

    target: str
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    server_name: str | None = None  # TLS name override (certificate issued for another name)
    max_message_bytes: int = 64 << 20


def open_channel(options: ChannelOptions) -> grpc.Channel:
    """A channel to the server with the chosen transport security."""
    channel_args: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.max_receive_message_length", 256 << 20),
        # a server that was down is found again within seconds, not gRPC's default two minutes
        # of reconnect backoff (the Orthanc sidecar and retrying clients rely on it)
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if options.server_name:
        channel_args.append(("grpc.ssl_target_name_override", options.server_name))
    if options.tls_ca is None and options.tls_cert is None:
        return grpc.insecure_channel(options.target, options=channel_args)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=options.tls_ca.read_bytes() if options.tls_ca else None,
        private_key=options.tls_key.read_bytes() if options.tls_key else None,
        certificate_chain=options.tls_cert.read_bytes() if options.tls_cert else None,
    )
    return grpc.secure_channel(options.target, credentials, options=channel_args)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata carrying the bearer token, if any."""
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class Study:
    """The files of one study, as found on disk."""

    study_instance_uid: str
    paths: tuple[Path, ...]

    def read(self) -> list[bytes]:
        """The Part-10 bytes of every file."""
        return [p.read_bytes() for p in self.paths]


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """The files named, with folders searched recursively (sorted within each folder)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            out.append(path)
    return out


def group_by_study(paths: Sequence[Path]) -> tuple[list[Study], list[tuple[Path, str]]]:
    """Files (folders are searched) grouped by StudyInstanceUID, and the files skipped (why)."""
    import pydicom

    groups: dict[str, list[Path]] = {}
    skipped: list[tuple[Path, str]] = []
    for path in expand_paths(paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            uid = str(ds.get("StudyInstanceUID", "")).strip()
        except Exception as exc:
            skipped.append((path, f"not DICOM ({type(exc).__name__})"))
            continue
        if not uid:
            skipped.append((path, "no StudyInstanceUID"))
            continue
        groups.setdefault(uid, []).append(path)
    studies = [Study(uid, tuple(p)) for uid, p in groups.items()]
    return studies, skipped


def chunks(
    instances: Sequence[bytes],
    *,
    defer_cost: float | None = None,
    include_overlay: bool = False,
    calling_ae_title: str = "",
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[triage_pb2.StudyChunk]:
    """StudyChunk messages for a study; per-request fields ride on the first chunk."""
    first = True
    for index, data in enumerate(instances):
        for offset in range(0, max(len(data), 1), chunk_bytes):
            chunk = triage_pb2.StudyChunk(instance=index, data=data[offset : offset + chunk_bytes])
            if first:
                if defer_cost is not None:
                    chunk.defer_cost = defer_cost
                chunk.include_overlay = include_overlay
                chunk.calling_ae_title = calling_ae_title
                first = False
            yield chunk


@dataclass(frozen=True)
class CallOptions:
    """Per-call options of :func:`triage_study`."""

    defer_cost: float | None = None
    include_overlay: bool = False
    calling_ae_title: str = ""
    timeout: float | None = 120.0
    token: str | None = None
    stream: bool | None = None  # None: stream when the study exceeds UNARY_MAX_BYTES


def triage_study(
    stub: triage_pb2_grpc.TriageStub, instances: Sequence[bytes], options: CallOptions
) -> triage_pb2.TriageResult:
    """Send one study (unary when small, streamed otherwise) and return the result."""
    size = sum(len(b) for b in instances)
    stream = options.stream if options.stream is not None else size > UNARY_MAX_BYTES
    metadata = call_metadata(options.token)
    if stream:
        result: triage_pb2.TriageResult = stub.TriageStream(
            chunks(
                instances,
                defer_cost=options.defer_cost,
                include_overlay=options.include_overlay,
                calling_ae_title=options.calling_ae_title,
            ),
            timeout=options.timeout,
            metadata=metadata,
        )
        return result
    request = triage_pb2.TriageRequest(
        instances=list(instances),
        include_overlay=options.include_overlay,
        calling_ae_title=options.calling_ae_title,
    )
    if options.defer_cost is not None:
        request.defer_cost = options.defer_cost
    result = stub.Triage(request, timeout=options.timeout, metadata=metadata)
    return result
