"""``triage bench serve``: end-to-end gRPC throughput and latency beside model-only throughput.

Starts ``triage serve`` from ``--bundle`` as a child process (the real server: port 0,
loopback, the configuration from ``--config``/``--set``), then for each study kind
(uncompressed and JPEG 2000 lossless; by default the real RG1 chest CR from pydicom-data) and
each concurrency (1, 8, 32) runs that many client threads until ``--studies`` studies are
done, and reports studies/s, p50 and p99 latency and errors. Every request carries a fresh
StudyInstanceUID (same length, patched in the bytes) so no cache or idempotent replay can
flatter the figures.

The load generator sends exactly the messages ``triage submit`` sends (one unary request up to
4 MiB, else TriageStream in 1 MiB chunks), encoded once before timing, so that on a machine
where it shares the cores with the server it takes as little from them as gRPC allows. The
server's and the load generator's CPU time per study are reported beside each cell (the
server's from ``/proc`` where there is one): with the client on the same cores, they show
where the time went.

Model-only throughput is the bundle's ONNX graph run directly on random inputs at the
server's maximum batch, with the same providers, in two arrangements: the server's own (its
``inference.streams`` batches at once, each on its intra-op threads) and one batch at a time
on every core. Shared machines change speed by 10-30 % from one minute to the next, so each
cell is measured in ``--rounds`` rounds, and each round times both model-only arrangements
(``--model-seconds`` each, the server idle) right before its gRPC run. The round's ratio is
end-to-end studies/s over the faster arrangement, so a server arrangement cannot flatter
itself; a cell reports the median round's ratio with the lowest and highest beside it.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.bundle import Bundle
    from service.stages.inference import OpenedModel


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench serve``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--config", type=Path, help="TOML configuration for the server")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a server configuration key (repeatable), as for `triage serve`",
    )
    parser.add_argument("--studies", type=int, default=32, help="studies per (kind, concurrency)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument(
        "--uncompressed", type=Path, help="uncompressed study file (default RG1_UNCR)"
    )
    parser.add_argument("--j2k", type=Path, help="JPEG 2000 study file (default RG1_J2KR)")
    parser.add_argument(
        "--model-seconds", type=float, default=2.0, help="model-only timing per arrangement (2)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell (3)")
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
    ratio_to_model: float  # the median round's
    ratio_low: float
    ratio_high: float
    model_only_per_s: float  # the faster arrangement in the median round
    server_cpu_ms_per_study: float | None
    client_cpu_ms_per_study: float
    #: the server's CPU per study by step (its metrics), decode workers included; "other" is
    #: what the steps do not cover (gRPC's transport threads, the response, logging)
    cpu_split_ms: dict[str, float] | None = None


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


class ModelOnly:
    """The bundle's graph alone, in one arrangement: ``plan.streams`` threads on one session."""

    def __init__(self, bundle: Bundle, batch: int, opened: OpenedModel) -> None:
        import numpy as np

        self.plan = opened.plan
        self.batch = batch
        self.model = opened.model
        size = bundle.spec.size
        x = np.random.default_rng(0).standard_normal((batch, 1, size, size))
        self.x = x.astype(np.float32)
        self.model.run(self.x)

    def rate(self, seconds: float) -> float:
        """Images/s over about ``seconds`` (at least one batch per stream)."""
        done = [0] * self.plan.streams
        stop = time.perf_counter() + seconds

        def stream(i: int) -> None:
            while True:
                self.model.run(self.x)
                done[i] += self.batch
                if time.perf_counter() >= stop:
                    return

        start = time.perf_counter()
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(self.plan.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(done) / (time.perf_counter() - start)


#: gRPC method paths of the Triage service, for the pre-encoded load generator.
_TRIAGE = "/triage.v1.Triage/Triage"
_TRIAGE_STREAM = "/triage.v1.Triage/TriageStream"


@dataclass(frozen=True)
class EncodedStudy:
    """A study as the wire messages ``triage submit`` sends for it (encoded once)."""

    stream: bool
    messages: tuple[bytes, ...]


def encode_study(data: bytes) -> EncodedStudy:
    """One Part-10 file as ``triage_study`` would send it: unary when small, else 1 MiB chunks."""
    from service._proto.triage.v1 import triage_pb2
    from triage_tools.client import UNARY_MAX_BYTES, chunks

    if len(data) > UNARY_MAX_BYTES:
        return EncodedStudy(True, tuple(m.SerializeToString() for m in chunks([data])))
    return EncodedStudy(False, (triage_pb2.TriageRequest(instances=[data]).SerializeToString(),))


class LoadGenerator:
    """Sends pre-encoded studies on one channel (no per-call message building)."""

    def __init__(self, channel: Any) -> None:
        from service._proto.triage.v1 import triage_pb2

        parse = triage_pb2.TriageResult.FromString
        self._unary = channel.unary_unary(
            _TRIAGE, request_serializer=None, response_deserializer=parse
        )
        self._stream = channel.stream_unary(
            _TRIAGE_STREAM, request_serializer=None, response_deserializer=parse
        )

    def send(self, study: EncodedStudy, timeout: float = 300.0) -> Any:
        """One call; raises ``grpc.RpcError`` on a non-OK status."""
        if study.stream:
            return self._stream(iter(study.messages), timeout=timeout)
        return self._unary(study.messages[0], timeout=timeout)


def run_cell(
    send: Callable[[EncodedStudy], Any], studies: list[EncodedStudy], concurrency: int, count: int
) -> tuple[list[float], int, float]:
    """Latencies (ms), errors and seconds of ``count`` calls from ``concurrency`` threads."""
    import grpc

    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    errors = [0]

    def worker() -> None:
        while True:
            with lock:
                i = next_index[0]
                if i >= count:
                    return
                next_index[0] += 1
            t0 = time.perf_counter()
            try:
                send(studies[i % len(studies)])
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


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and every process below it so far (the
    decode workers hang below the server's forkserver; Linux ``/proc``), or None."""
    try:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = stat[stat.rindex(")") + 2 :].split()
                stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        if pid not in stats:
            return None
        total, todo = 0, [pid]
        while todo:
            current = todo.pop()
            total += stats[current][1]
            todo += [p for p, (parent, _) in stats.items() if parent == current]
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


#: The server's CPU steps, in the order a study meets them (``triage_cpu_seconds_total``).
CPU_STEPS = ("receive", "assemble", "hand-over", "header", "decode", "preprocess", "model",
             "conclude", "result")  # fmt: skip


def scrape_cpu(port: int) -> dict[str, float]:
    """``triage_cpu_seconds_total`` by step from a server's metrics endpoint."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.findall(r'^triage_cpu_seconds_total\{stage="([^"]+)"\} (\S+)$', text, re.M)
    return {stage: float(value) for stage, value in found}


def floor_ms(data: bytes, repeats: int = 5) -> float:
    """CPU ms of the bare floor: pydicom reading the file and decoding its pixels in full
    (numpy, or openjpeg for JPEG 2000), the median of ``repeats``."""
    import pydicom

    times = []
    for _ in range(repeats):
        start = time.process_time()
        pydicom.dcmread(io.BytesIO(data)).pixel_array  # noqa: B018
        times.append((time.process_time() - start) * 1000.0)
    return statistics.median(times)


def _default_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"pydicom-data does not ship {name}; pass the file explicitly")
    return Path(str(found))


def server_args(args: argparse.Namespace) -> list[str]:
    """``triage serve`` arguments: the bench's bundle, config and ``--set`` flags.

    The bench resends one file: with the worklist on, every call after the first would be an
    idempotent replay, so the worklist is off unless ``--set worklist.path=...`` says otherwise
    (it measures the triage path; ``triage bench durability`` the worklist).
    """
    out = ["--bundle", str(args.bundle)]
    if args.config is not None:
        out += ["--config", str(args.config)]
    keys = {flag.split("=", 1)[0].strip() for flag in args.set}
    defaults = {"worklist.path": "", "logging.level": "WARNING", "metrics.port": str(_free_port())}
    for flag in [*args.set, *(f"{k}={v}" for k, v in defaults.items() if k not in keys)]:
        out += ["--set", flag]
    return out


@dataclass(frozen=True)
class _Round:
    latencies: list[float]
    errors: int
    seconds: float
    server_cpu: float | None
    client_cpu: float
    model_only: dict[str, float]
    cpu_steps: dict[str, float] | None = None  # seconds per step in the round

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    @property
    def ratio(self) -> float:
        return self.rate / max(self.model_only.values())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _split(rounds: list[_Round], done: int, total_cpu: float | None) -> dict[str, float] | None:
    """CPU ms per study by step, summed over the rounds, with the remainder as ``other``."""
    if done == 0 or any(r.cpu_steps is None for r in rounds):
        return None
    steps = {s: 0.0 for s in CPU_STEPS}
    for r in rounds:
        assert r.cpu_steps is not None
        for s, v in r.cpu_steps.items():
            steps[s] = steps.get(s, 0.0) + v
    split = {s: 1000.0 * v / done for s, v in steps.items()}
    if total_cpu is not None:
        split["other"] = max(0.0, total_cpu - sum(split.values()))
        split["outside the model"] = total_cpu - split["model"]
    return split


def _cell(kind: str, concurrency: int, rounds: list[_Round]) -> Cell:
    """One table row from a cell's rounds (the median round by ratio)."""
    ordered = sorted(rounds, key=lambda r: r.ratio)
    median = ordered[len(ordered) // 2]
    latencies = [ms for r in rounds for ms in r.latencies]
    done = len(latencies)
    seconds = sum(r.seconds for r in rounds)
    cpu = [r.server_cpu for r in rounds]
    total = (
        None
        if any(c is None for c in cpu)
        else 1000.0 * sum(c for c in cpu if c is not None) / max(done, 1)
    )
    return Cell(
        kind=kind,
        concurrency=concurrency,
        studies=done,
        errors=sum(r.errors for r in rounds),
        seconds=seconds,
        studies_per_s=median.rate,
        p50_ms=_percentile(latencies, 0.5),
        p99_ms=_percentile(latencies, 0.99),
        ratio_to_model=median.ratio,
        ratio_low=ordered[0].ratio,
        ratio_high=ordered[-1].ratio,
        model_only_per_s=max(median.model_only.values()),
        server_cpu_ms_per_study=total,
        client_cpu_ms_per_study=1000.0 * sum(r.client_cpu for r in rounds) / max(done, 1),
        cpu_split_ms=_split(rounds, done, total),
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    import sys

    import grpc

    from service.bundle import load_bundle
    from service.config import ConfigError, load_config, parse_set_flags
    from service.stages.inference import open_model
    from triage_common.console import print_table, write_json
    from triage_common.onnx_runtime import usable_cores
    from triage_tools.serve_process import ServeProcess

    overrides: dict[str, Any] = dict(parse_set_flags(args.set))
    overrides["bundle"] = str(args.bundle)
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"triage bench serve: {exc}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.studies < 1:
        print("triage bench serve: --rounds and --studies must be >= 1", file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    kinds = {
        "uncompressed": args.uncompressed or _default_file("RG1_UNCR.dcm"),
        "jpeg2000": args.j2k or _default_file("RG1_J2KR.dcm"),
    }
    inference = config.inference
    batch = inference.max_batch
    cores = usable_cores()
    bundle = load_bundle(args.bundle)  # verified once; the server verifies its own copy
    opened = {
        "server": open_model(bundle, inference),
        "one batch at a time": open_model(bundle, inference, streams=1),
    }
    plans = {name: o.plan for name, o in opened.items()}
    models = {name: ModelOnly(bundle, batch, o) for name, o in opened.items()}
    encoded = {
        kind: [encode_study(d) for d in _uid_variants(path.read_bytes(), max(args.studies, 2))]
        for kind, path in kinds.items()
    }
    floors = {kind: floor_ms(path.read_bytes()) for kind, path in kinds.items()}
    serve_args = server_args(args)
    metrics_port = next(
        int(item.split("=", 1)[1]) for item in serve_args if item.startswith("metrics.port=")
    )
    server = ServeProcess(serve_args, start_timeout=120.0)
    cells: list[Cell] = []
    try:
        server.wait_ready(600.0)
        channel = grpc.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 256 << 20)]
        )
        load = LoadGenerator(channel)
        for kind, studies in encoded.items():
            run_cell(load.send, studies[:2], 2, 2)  # warm the path (decoders, caches)
            for c in concurrencies:
                rounds = []
                for _ in range(args.rounds):
                    alone = {name: m.rate(args.model_seconds) for name, m in models.items()}
                    steps0 = scrape_cpu(metrics_port)
                    cpu0, own0 = process_cpu_seconds(server.proc.pid), time.process_time()
                    latencies, errors, seconds = run_cell(load.send, studies, c, args.studies)
                    cpu1, own1 = process_cpu_seconds(server.proc.pid), time.process_time()
                    steps1 = scrape_cpu(metrics_port)
                    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
                    steps = {s: steps1.get(s, 0.0) - steps0.get(s, 0.0) for s in steps1}
                    rounds.append(
                        _Round(latencies, errors, seconds, server_cpu, own1 - own0, alone, steps)
                    )
                cells.append(_cell(kind, c, rounds))
        channel.close()
    finally:
        status = server.stop()
    if status != 0:
        print(f"triage bench serve: the server exited with status {status}", file=sys.stderr)
    rows: list[list[object]] = [
        [c.kind, c.concurrency, c.studies, c.errors, c.studies_per_s, c.p50_ms, c.p99_ms,
         "-" if c.server_cpu_ms_per_study is None else c.server_cpu_ms_per_study,
         c.client_cpu_ms_per_study, c.model_only_per_s, c.ratio_to_model,
         f"{c.ratio_low:.2f}-{c.ratio_high:.2f}"]
        for c in cells
    ]  # fmt: skip
    arrangement = ", ".join(
        f"{name} {p.streams} x {p.intra_op_threads or 'default'} threads"
        for name, p in plans.items()
    )
    print_table(
        f"triage bench serve: {args.bundle} ({args.rounds} rounds per cell; model only at "
        f"batch {batch}: {arrangement}, the faster one counts)",
        ["study", "concurrency", "studies", "errors", "studies/s", "p50 ms", "p99 ms",
         "server CPU ms/study", "client CPU ms/study", "model-only img/s", "ratio",
         "ratio range"],
        rows,
    )  # fmt: skip
    split_rows: list[list[object]] = [
        [c.kind, c.concurrency, *(c.cpu_split_ms.get(s, 0.0) for s in (*CPU_STEPS, "other")),
         c.cpu_split_ms["outside the model"], floors[c.kind]]
        for c in cells
        if c.cpu_split_ms is not None and "outside the model" in c.cpu_split_ms
    ]  # fmt: skip
    print_table(
        "server CPU ms per study by step (decode workers included; other: gRPC transport, "
        "response, logging), beside the floor: pydicom read + full decode of the file alone",
        ["study", "concurrency", *CPU_STEPS, "other", "outside the model", "floor"],
        split_rows,
    )
    if args.json:
        write_json(
            args.json,
            {
                "bundle": str(args.bundle),
                "cores": cores,
                "rounds": args.rounds,
                "max_batch": batch,
                "model_only_arrangements": {
                    name: {"streams": p.streams, "intra_op_threads": p.intra_op_threads}
                    for name, p in plans.items()
                },
                "server_exit_status": status,
                "floor_ms": floors,
                "cells": [asdict(c) for c in cells],
                "median_ratio": statistics.median(c.ratio_to_model for c in cells)
                if cells
                else None,
            },
        )
    return 0 if status == 0 and all(c.errors == 0 for c in cells) else 1
