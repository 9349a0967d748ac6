"""``triage bench kserve``: studies/s through a remote Triton (KServe v2) beside in-process.

One run measures both inference backends on the same bundle and the same studies:

* ``onnxruntime``: ``triage serve`` running the graph in-process (the default backend);
* ``kserve``: ``triage serve`` with ``inference.backend = "kserve"``, its micro-batches sent to a
  Triton Inference Server over KServe v2 gRPC.

The Triton server is ``--triton-address`` when given (a real deployment's; ``--model-name``
names the model), else a local one started here: PyPI's PyTriton ``tritonserver`` (Python
backend) in its own cached virtual environment, serving the bundle's graph under ONNX Runtime
(:mod:`triage_tools.triton_local`), with Triton's dynamic batcher in front. Both ``triage
serve`` processes run at once on loopback with the worklist off; each (concurrency, round)
measures one backend while the other idles, alternating, so that drift of a shared machine hits
both alike. A load generator sends the study (default the real RG1 chest CR, uncompressed) as
``triage submit`` frames it, each call with a fresh StudyInstanceUID. The last column checks
that both backends gave the same decisions and P(error) within 1e-5 on the studies.

On one machine the local Triton shares the cores with both servers and the load generator, so
the kserve figure here is the protocol's overhead on a CPU, not what a GPU pool gives.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BACKENDS = ("onnxruntime", "kserve")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench kserve``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument(
        "--triton-address",
        help="HOST:PORT of a running Triton serving the bundle (default: start a local one)",
    )
    parser.add_argument(
        "--model-name", default="cxr_triage", help="the model's name on Triton (cxr_triage)"
    )
    parser.add_argument(
        "--triton-threads", type=int, default=0, help="ONNX Runtime threads of a local Triton "
        "(0: every usable core)",
    )  # fmt: skip
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a configuration key for both servers (repeatable), as for `triage serve`",
    )
    parser.add_argument("--study", type=Path, help="study file (default RG1_UNCR)")
    parser.add_argument("--studies", type=int, default=32, help="studies per (backend, round)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell (3)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


@dataclass(frozen=True)
class Cell:
    """One (backend, concurrency) measurement: the median round's rate, latencies of all."""

    backend: str
    concurrency: int
    studies: int
    errors: int
    studies_per_s: float
    rounds_per_s: list[float]
    p50_ms: float
    p99_ms: float


def _uid_variants(data: bytes, n: int) -> list[bytes]:
    """``n`` copies of a Part-10 file, each with a distinct StudyInstanceUID of the same length."""
    import pydicom

    uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
    raw = uid.encode("ascii")
    out = []
    for i in range(n):
        tail = str(i).encode("ascii")
        out.append(data.replace(raw, raw[: len(raw) - len(tail)] + tail))
    return out


def _serve_args(args: argparse.Namespace, backend: str, address: str) -> list[str]:
    sets = ["worklist.path=", "logging.level=WARNING", *args.set]
    if backend == "kserve":
        sets += ["inference.backend=kserve", f"inference.kserve_address={address}"]
        sets += [f"inference.kserve_model={args.model_name}"]
    out = ["--bundle", str(args.bundle)]
    for item in sets:
        out += ["--set", item]
    return out


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q * 100)) if values else float("nan")


def _agreement(channels: dict[str, Any], studies: list[bytes]) -> tuple[int, float]:
    """Studies with the same decision on both backends, and the largest |P(error)| gap."""
    from service._proto.triage.v1 import triage_pb2_grpc
    from triage_tools.client import CallOptions, triage_study

    stubs = {name: triage_pb2_grpc.TriageStub(ch) for name, ch in channels.items()}  # type: ignore[no-untyped-call]
    results = {
        name: [triage_study(stub, [s], CallOptions(timeout=120)) for s in studies]
        for name, stub in stubs.items()
    }
    a, b = (results[name] for name in BACKENDS)
    same = sum(x.decision == y.decision for x, y in zip(a, b, strict=True))
    gap = max(abs(x.p_error - y.p_error) for x, y in zip(a, b, strict=True))
    return same, gap


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    import contextlib

    import grpc

    from service.config import ConfigError, load_config, parse_set_flags
    from triage_common.console import print_table, write_json
    from triage_common.onnx_runtime import usable_cores
    from triage_tools.apps.bench_serve import LoadGenerator, encode_study, run_cell
    from triage_tools.serve_process import ServeProcess
    from triage_tools.triton_local import TritonProcess, TritonUnavailable, ensure_venv

    try:
        config = load_config(
            None, env={}, overrides={**parse_set_flags(args.set), "bundle": str(args.bundle)}
        )
    except ConfigError as exc:
        print(f"triage bench kserve: {exc}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.studies < 1:
        print("triage bench kserve: --rounds and --studies must be >= 1", file=sys.stderr)
        return 2
    if not (args.bundle / "manifest.json").is_file():
        print(f"triage bench kserve: --bundle {args.bundle} is not a model bundle", file=sys.stderr)
        return 2
    if args.study is not None and not args.study.is_file():
        print(f"triage bench kserve: --study {args.study} does not exist", file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.study is not None:
        study_path = args.study
    else:
        from pydicom.data import get_testdata_file

        study_path = Path(str(get_testdata_file("RG1_UNCR.dcm")))
    variants = _uid_variants(study_path.read_bytes(), max(args.studies, 2))
    encoded = [encode_study(d) for d in variants]
    cores = usable_cores()
    with contextlib.ExitStack() as stack:
        address = args.triton_address
        if address is None:
            try:
                python = ensure_venv()
            except TritonUnavailable as exc:
                print(f"triage bench kserve: no local Triton: {exc}", file=sys.stderr)
                return 1
            threads = args.triton_threads or cores
            triton = TritonProcess(
                python, args.bundle, model_name=args.model_name, threads=threads,
                max_batch=config.inference.max_batch,
            )  # fmt: skip
            stack.callback(triton.stop)
            try:
                triton.wait_ready(180)
            except TritonUnavailable as exc:
                print(f"triage bench kserve: {exc}", file=sys.stderr)
                return 1
            address = triton.address
        servers = {b: ServeProcess(_serve_args(args, b, address), 120.0) for b in BACKENDS}
        for server in servers.values():
            stack.callback(server.stop)
        for server in servers.values():
            server.wait_ready(600.0)
        channels = {
            b: stack.enter_context(
                grpc.insecure_channel(s.address, [("grpc.max_send_message_length", 256 << 20)])
            )
            for b, s in servers.items()
        }
        loads = {b: LoadGenerator(ch) for b, ch in channels.items()}
        for load in loads.values():
            run_cell(load.send, encoded[:2], 2, 2)  # warm the paths
        cells: list[Cell] = []
        for c in concurrencies:
            rates: dict[str, list[float]] = {b: [] for b in BACKENDS}
            latencies: dict[str, list[float]] = {b: [] for b in BACKENDS}
            errors = dict.fromkeys(BACKENDS, 0)
            for _ in range(args.rounds):
                for b in BACKENDS:
                    lat, err, seconds = run_cell(loads[b].send, encoded, c, args.studies)
                    rates[b].append(len(lat) / seconds if seconds > 0 else 0.0)
                    latencies[b] += lat
                    errors[b] += err
            cells += [
                Cell(b, c, len(latencies[b]), errors[b], statistics.median(rates[b]),
                     rates[b], _percentile(latencies[b], 0.5), _percentile(latencies[b], 0.99))
                for b in BACKENDS
            ]  # fmt: skip
        same, gap = _agreement(channels, variants[:8])
    by_key = {(cell.backend, cell.concurrency): cell for cell in cells}
    rows: list[list[object]] = []
    for cell in cells:
        base = by_key[("onnxruntime", cell.concurrency)].studies_per_s
        ratio = cell.studies_per_s / base if base > 0 else float("nan")
        spread = f"{min(cell.rounds_per_s):.1f}-{max(cell.rounds_per_s):.1f}"
        rows.append([cell.backend, cell.concurrency, cell.studies, cell.errors,
                     cell.studies_per_s, spread, cell.p50_ms, cell.p99_ms, ratio])  # fmt: skip
    where = args.triton_address or f"local PyTriton Triton ({args.triton_threads or cores} threads)"
    print_table(
        f"triage bench kserve: {args.bundle} on {cores} cores, {study_path.name}, {args.rounds} "
        f"rounds per cell; kserve = {where}",
        ["backend", "concurrency", "studies", "errors", "studies/s (median)", "rounds",
         "p50 ms", "p99 ms", "/ in-process"],
        rows,
    )  # fmt: skip
    print(f"agreement on {min(8, len(variants))} studies: {same} same decisions, "
          f"largest |P(error) difference| {gap:.2e}")  # fmt: skip
    if args.json:
        write_json(
            args.json,
            {
                "bundle": str(args.bundle),
                "cores": cores,
                "triton": where,
                "study": study_path.name,
                "rounds": args.rounds,
                "cells": [asdict(c) for c in cells],
                "same_decisions": same,
                "max_p_error_gap": gap,
            },
        )
    ok = all(c.errors == 0 for c in cells) and gap <= 1e-5 and same == min(8, len(variants))
    return 0 if ok else 1
