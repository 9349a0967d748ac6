"""``triage bench serve``: end-to-end gRPC throughput and latency beside model-only throughput.

Starts a server in this process from ``--bundle`` (port 0, loopback, the configuration from
``--config``/``--set``), then for each study kind (uncompressed and JPEG 2000 lossless; by
default the real RG1 chest CR from pydicom-data) and each concurrency (1, 8, 32) runs that many
client threads until ``--studies`` studies are done, and reports studies/s, p50 and p99
latency and errors. Every request carries a fresh StudyInstanceUID (same length, patched in
the bytes) so no cache or idempotent replay can flatter the figures.

Model-only throughput is the bundle's ONNX graph run directly (same providers, threads and
``--set inference.max_batch``) on random inputs at the server's maximum batch, measured before
and after the gRPC runs in the same process and averaged; the ratio column is end-to-end
studies/s over it. Figures on shared machines vary between runs: compare ratios within a run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench serve``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--config", type=Path, help="TOML configuration for the server")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--studies", type=int, default=32, help="studies per (kind, concurrency)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument(
        "--uncompressed", type=Path, help="uncompressed study file (default RG1_UNCR)"
    )
    parser.add_argument("--j2k", type=Path, help="JPEG 2000 study file (default RG1_J2KR)")
    parser.add_argument("--model-seconds", type=float, default=5.0, help="model-only timing, each")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


@dataclass(frozen=True)
class Cell:
    """One (kind, concurrency) measurement."""

    kind: str
    concurrency: int
    studies: int
    errors: int
    seconds: float
    studies_per_s: float
    p50_ms: float
    p99_ms: float
    ratio_to_model: float


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _uid_variants(data: bytes, n: int) -> list[bytes]:
    """``n`` copies of a Part-10 file, each with a distinct StudyInstanceUID of the same length."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    uid = str(ds.StudyInstanceUID).encode("ascii")
    if data.count(uid) < 1:
        return [data] * n
    out = []
    for i in range(n):
        tail = str(i).encode("ascii")
        new = uid[: len(uid) - len(tail)] + tail if len(tail) < len(uid) - 4 else uid
        out.append(data.replace(uid, new))
    return out


def model_only(
    bundle: Path, batch: int, providers: list[str], threads: int, seconds: float
) -> float:
    """Images/s of the bundle's graph at ``batch`` (random inputs, same session settings)."""
    import numpy as np

    from service.bundle import load_bundle
    from service.runtime import OnnxRuntimeModel

    info = load_bundle(bundle)
    model = OnnxRuntimeModel(
        info.model_file, providers=providers, intra_op_threads=threads, allow_spinning=False
    )
    x = np.random.default_rng(0).standard_normal((batch, 1, info.spec.size, info.spec.size))
    x32 = x.astype(np.float32)
    model.run(x32)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.run(x32)
        done += batch
    return done / (time.perf_counter() - start)


def run_cell(
    stub: Any, payloads: list[bytes], concurrency: int, studies: int
) -> tuple[list[float], int, float]:
    """Latencies (ms), errors and seconds of ``studies`` calls from ``concurrency`` threads."""
    import grpc

    from service.client import CallOptions, triage_study

    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    errors = [0]

    def worker() -> None:
        while True:
            with lock:
                i = next_index[0]
                if i >= studies:
                    return
                next_index[0] += 1
            data = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            try:
                triage_study(stub, [data], CallOptions(timeout=300.0))
            except grpc.RpcError:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000.0)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - start


def _default_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"pydicom-data does not ship {name}; pass the file explicitly")
    return Path(str(found))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    import grpc

    from service._proto.triage.v1 import triage_pb2_grpc
    from service.config import load_config, parse_set_flags
    from service.server import PROVIDER_NAMES, create_server
    from triage_common.console import print_table, write_json

    overrides: dict[str, Any] = dict(parse_set_flags(args.set))
    overrides.update({"bundle": str(args.bundle), "server.port": 0, "server.host": "127.0.0.1"})
    overrides.setdefault("logging.level", "WARNING")
    # The bench resends one file: with the worklist on, every call after the first would be an
    # idempotent replay. It measures the triage path; `triage bench durability` the worklist.
    overrides.setdefault("worklist.path", "")
    config = load_config(args.config, overrides=overrides)
    from triage_common.logging import configure_logging

    configure_logging(config.logging.level, json_output=config.logging.json)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    kinds = {
        "uncompressed": args.uncompressed or _default_file("RG1_UNCR.dcm"),
        "jpeg2000": args.j2k or _default_file("RG1_J2KR.dcm"),
    }
    providers = [PROVIDER_NAMES[p] for p in config.inference.providers]
    batch = config.inference.max_batch
    threads = config.inference.intra_op_threads
    before = model_only(args.bundle, batch, providers, threads, args.model_seconds)
    server, port = create_server(config)
    server.start(wait_ready=True, timeout=600)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 256 << 20)]
    )
    stub = triage_pb2_grpc.TriageStub(channel)  # type: ignore[no-untyped-call]
    raw: list[tuple[str, int, list[float], int, float]] = []
    try:
        for kind, path in kinds.items():
            payloads = _uid_variants(path.read_bytes(), max(args.studies, 1))
            run_cell(stub, payloads[:2], 2, 2)  # warm the path (decoders, caches)
            for c in concurrencies:
                latencies, errors, seconds = run_cell(stub, payloads, c, args.studies)
                raw.append((kind, c, latencies, errors, seconds))
    finally:
        channel.close()
        server.stop(5).wait(30)
    after = model_only(args.bundle, batch, providers, threads, args.model_seconds)
    model_rate = (before + after) / 2.0
    cells = [
        Cell(
            kind=kind,
            concurrency=c,
            studies=len(lat),
            errors=errors,
            seconds=seconds,
            studies_per_s=len(lat) / seconds if seconds > 0 else 0.0,
            p50_ms=_percentile(lat, 0.5),
            p99_ms=_percentile(lat, 0.99),
            ratio_to_model=(len(lat) / seconds) / model_rate if seconds > 0 else 0.0,
        )
        for kind, c, lat, errors, seconds in raw
    ]
    rows: list[list[object]] = [
        [
            c.kind,
            c.concurrency,
            c.studies,
            c.errors,
            c.studies_per_s,
            c.p50_ms,
            c.p99_ms,
            c.ratio_to_model,
        ]
        for c in cells
    ]
    rows.append([f"model only (batch {batch})", "-", "-", "-", model_rate, "-", "-", 1.0])
    print_table(
        f"triage bench serve: {args.bundle} (model-only {before:.1f} before, {after:.1f} after)",
        ["study", "concurrency", "studies", "errors", "studies/s", "p50 ms", "p99 ms", "ratio"],
        rows,
    )
    if args.json:
        write_json(
            args.json,
            {
                "bundle": str(args.bundle),
                "model_only_images_per_s": {"before": before, "after": after, "mean": model_rate},
                "max_batch": batch,
                "cells": [asdict(c) for c in cells],
                "median_ratio": statistics.median(c.ratio_to_model for c in cells)
                if cells
                else None,
            },
        )
    return 0 if all(c.errors == 0 for c in cells) else 1
