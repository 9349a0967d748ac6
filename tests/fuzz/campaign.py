"""``make fuzz``: a structure-aware fuzz campaign against the servicer's own entry point.

Phase 1 (``--inputs``, 100,000 by default) runs mutated DICOM through
:meth:`service.pipeline.TriagePipeline.prepare` — the call the gRPC servicer makes, decode
workers and all — from several threads, and counts outcomes: OK, each gRPC status the outcome
maps to, calls that escape the boundary (anything but the service's own exceptions), slow calls
(over ``--slow`` seconds). It prints the counts, the slowest input, decode-worker replacements
by reason and the peak resident memory of the server process plus its decode workers. Every
escaped or slow input is written to ``--out`` (and, with ``--save-regressions``, into
``tests/fuzz/regressions/``, which ``make test`` replays).

Phase 2 (``--grpc``, 2,000 by default) starts a real ``triage serve`` and sends the worst
inputs of phase 1 (slowest first, then a sample of every outcome, then bombs) from 8 clients
while a prober checks health every 0.2 s; it reports the slowest call, calls without a reason,
the slowest health answer, whether the server is alive at the end, and its memory before, at
the peak and a minute after the burst.

Seeds: every pydicom-data file and pydicom's own test files, each also relabelled as a frontal
chest CR (so that mutations reach the pixel decoders), small phantoms from ``triage synth`` in
every transfer syntax it writes, and the bombs of :mod:`tests.fuzz.bombs`.

Why not atheris: it installs here, but its coverage feedback sees only the process it runs in,
and every byte of untrusted input is parsed and decoded in the decode workers, separate
processes; running it in-process would fuzz something other than what the servicer calls. The
mutator knows DICOM's structure instead (see :mod:`tests.fuzz.mutators`) and keeps inputs that
give an outcome not seen before in its corpus.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

REGRESSIONS = ROOT / "tests" / "fuzz" / "regressions"


@dataclass
class Tally:
    """What the campaign saw."""

    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    signatures: set[str] = field(default_factory=set)
    slowest: list[tuple[float, str, str]] = field(default_factory=list)  # (s, outcome, digest)
    escaped: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _pss(pid: int) -> int:
    """Proportional set size of ``pid``: its resident memory, shared pages split among sharers."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it (the decode workers hang below the forkserver)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def tree_rss(pid: int) -> int:
    """Memory of ``pid`` and its descendants (decode workers, forkserver): the sum of their
    proportional set sizes, so that shared pages count once."""
    return sum(_pss(p) for p in _tree(pid))


class RssSampler:
    """Samples the resident memory of a process tree every 50 ms; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, tree_rss(self.pid))

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak


def seeds(work: Path) -> list[bytes]:
    """pydicom-data and pydicom test files (as they are and relabelled as chest CR), phantoms
    in every syntax ``triage synth`` writes, and the bombs."""
    import pydicom
    from pydicom.data import get_testdata_file

    from tests.fuzz import bombs
    from tests.helpers.dicom_factory import as_chest

    folders = {
        Path(str(get_testdata_file("RG1_UNCR.dcm"))).parent,
        Path(pydicom.__file__).parent / "data" / "test_files",
    }
    out: list[bytes] = []
    for folder in sorted(folders):
        for path in sorted(folder.glob("*.dcm")):
            data = path.read_bytes()
            if len(data) > 16 << 20:
                continue
            out.append(data)
            with contextlib.suppress(Exception):  # not every file can be relabelled
                out.append(as_chest(data))
    phantoms = work / "phantoms"
    subprocess.run(
        [sys.executable, "-m", "triage_tools.cli", "synth", str(phantoms), "--studies", "24",
         "--size", "256", "--syntax", "mixed", "--seed", "11", "--workers", "1"],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    out += [p.read_bytes() for p in sorted(phantoms.rglob("*.dcm"))]
    out += [
        bombs.rle_zeros(6000, 6000),
        bombs.rle_zeros(511, 65535),
        bombs.jpeg_declaring(255, 65535),
        bombs.jpeg_declaring(6000, 6000),
        bombs.jpegls_declaring(6000, 6000),
        bombs.j2k_declaring(6000, 6000),
        bombs.deflate_bomb(300 << 20),
        bombs.deflated_chest(),
    ]
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _save(folder: Path, data: bytes, tag: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{tag}-{_digest(data)}.dcm"
    (folder / name).write_bytes(data)
    return name


def fuzz(args: argparse.Namespace, work: Path) -> tuple[Tally, dict[str, Any], list[bytes]]:
    """Phase 1; returns the tally, the report and the worst inputs for phase 2."""
    from service.bundle import load_bundle
    from service.config import DecodeConfig, EligibilityConfig, PolicyConfig
    from service.core.errors import TriageError
    from service.pipeline import RequestOptions, RequestTrace, TriagePipeline
    from service.rpc.server import configure_decoders
    from service.rpc.status import status_for
    from service.stages.batcher import MicroBatcher
    from service.stages.decode_pool import DecodePool
    from service.stages.policy import StaticPolicySource, policy_from_bundle
    from tests.fuzz.mutators import safe_mutate
    from tests.helpers.bundle_factory import build_bundle_subprocess

    configure_decoders()  # the server's lenient, quiet pydicom settings
    bundle = load_bundle(build_bundle_subprocess(work / "bundle"))
    replaced: Counter[str] = Counter()

    class Observer:
        def decode_task(self, seconds: float, outcome: str) -> None:
            del seconds, outcome

        def decode_worker_replaced(self, reason: str) -> None:
            replaced[reason] += 1

        def decode_workers_busy(self, busy: int, total: int) -> None:
            del busy, total

    pool = DecodePool.from_config(DecodeConfig(), EligibilityConfig(), bundle.spec, Observer())
    pool.start()
    batcher = MicroBatcher(_NoModel(), max_batch=1, max_wait_ms=0, capacity=1)
    policy = StaticPolicySource(policy_from_bundle(bundle, PolicyConfig()))
    pipeline = TriagePipeline(bundle, batcher, policy, pool)
    corpus = seeds(work)
    print(f"fuzz: {len(corpus)} seeds, {args.inputs} inputs, {args.threads} threads", flush=True)
    tally = Tally()
    worst: dict[str, list[bytes]] = {}
    sampler = RssSampler(os.getpid())
    rng_master = random.Random(args.seed)

    def one(n: int) -> None:
        rng = random.Random(rng_master.random() + n)
        base = rng.choice(corpus)
        data = safe_mutate(base, rng, corpus) if rng.random() < 0.97 else base
        start = time.perf_counter()
        outcome, status, message = "OK", "OK", ""
        try:
            pipeline.prepare([data], RequestOptions(), RequestTrace())
        except TriageError as exc:
            outcome, message = type(exc).__name__, str(exc)
            status = status_for(exc)[0].name
        except BaseException as exc:  # escaped the boundary: the campaign's finding
            outcome, status, message = f"ESCAPED {type(exc).__name__}", "ESCAPED", ""
        seconds = time.perf_counter() - start
        signature = f"{outcome}: {' '.join(message.split()[:6])}"
        with tally.lock:
            tally.outcomes[outcome] += 1
            tally.statuses[status] += 1
            tally.times.append(seconds)
            if signature not in tally.signatures and len(corpus) < 4000:
                tally.signatures.add(signature)
                corpus.append(data)  # a new kind of outcome: keep mutating from it
            if status == "ESCAPED":
                tally.escaped.append(_save(args.out / "escaped", data, "escaped"))
            if seconds > args.slow:
                tally.slow.append(_save(args.out / "slow", data, "slow"))
            tally.slowest.append((seconds, outcome, _digest(data)))
            tally.slowest.sort(reverse=True)
            del tally.slowest[10:]
            bucket = worst.setdefault(status, [])
            if len(bucket) < args.grpc:
                bucket.append(data)
            if seconds > 0.2:
                worst.setdefault("SLOW", []).append(data)

    started = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as threads:
        for done, _ in enumerate(threads.map(one, range(args.inputs)), start=1):
            if done % 10000 == 0:
                rate = done / (time.perf_counter() - started)
                print(f"  {done} inputs ({rate:.0f}/s): {dict(tally.statuses)}", flush=True)
    elapsed = time.perf_counter() - started
    peak = sampler.stop()
    pool.stop()
    report = {
        "inputs": args.inputs,
        "seconds": round(elapsed, 1),
        "inputs_per_second": round(args.inputs / elapsed, 1),
        "statuses": dict(tally.statuses.most_common()),
        "outcomes": dict(tally.outcomes.most_common()),
        "escaped_the_boundary": len(tally.escaped),
        f"slower_than_{args.slow:g}_s": len(tally.slow),
        "slowest_s": [
            {"seconds": round(s, 3), "outcome": o, "input": d} for s, o, d in tally.slowest
        ],
        "median_ms": round(statistics.median(tally.times) * 1000.0, 2),
        "worker_replacements": dict(replaced.most_common()),
        "peak_rss_mb_server_and_workers": round(peak / 2**20, 1),
        "corpus": len(corpus),
    }
    ordered = worst.get("SLOW", [])[: args.grpc // 4]
    for status, inputs in sorted(worst.items()):
        if status != "SLOW":
            ordered += inputs[: max(1, args.grpc // max(1, len(worst)))]
    chosen = {id(data) for data in ordered}
    spare = [d for _, inputs in sorted(worst.items()) for d in inputs if id(d) not in chosen]
    ordered += spare[: max(0, args.grpc - len(ordered))]  # fill up to --grpc with the rest
    return tally, report, ordered[: args.grpc]


class _NoModel:
    """prepare never reaches the model; the batcher needs one to exist."""

    def run(self, batch: Any) -> dict[str, Any]:
        raise RuntimeError("the fuzz campaign does not run the model")


def grpc_phase(args: argparse.Namespace, work: Path, inputs: list[bytes]) -> dict[str, Any]:
    """Phase 2: the worst inputs over gRPC from 8 clients while health is probed."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc
    from triage_tools.serve_process import ServeProcess

    bundle = work / "bundle"
    server = ServeProcess(
        ["--bundle", str(bundle), "--set", f"worklist.path={work / 'worklist.db'}"],
        start_timeout=120.0,
    )
    server.wait_ready(120.0)
    idle = tree_rss(server.proc.pid)
    sampler = RssSampler(server.proc.pid)
    health_ms: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.wait(0.2):
                start = time.perf_counter()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=1.0)
                    health_ms.append((time.perf_counter() - start) * 1000.0)
                except grpc.RpcError:
                    health_ms.append(float("inf"))

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    calls: list[tuple[float, str, bool]] = []
    lock = threading.Lock()

    def client(share: list[bytes]) -> None:
        with grpc.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 256 << 20)]
        ) as channel:
            stub = triage_pb2_grpc.TriageStub(channel)
            for data in share:
                start = time.perf_counter()
                code, reason = "OK", True
                try:
                    stub.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
                except grpc.RpcError as exc:
                    code, reason = exc.code().name, bool((exc.details() or "").strip())
                with lock:
                    calls.append((time.perf_counter() - start, code, reason))

    shares = [inputs[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, shares))
    stop.set()
    prober.join()
    after_burst = tree_rss(server.proc.pid)
    time.sleep(args.settle)
    settled = tree_rss(server.proc.pid)
    peak = sampler.stop()
    alive = server.proc.poll() is None
    if alive:
        with grpc.insecure_channel(server.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=5
            )
        alive = reply.status == health_pb2.HealthCheckResponse.SERVING
    status = server.stop()
    codes = Counter(code for _, code, _ in calls)
    return {
        "calls": len(calls),
        "statuses": dict(codes.most_common()),
        "slowest_call_s": round(max((s for s, _, _ in calls), default=0.0), 3),
        "calls_over_2_s": sum(1 for s, _, _ in calls if s > 2.0),
        "errors_without_a_reason": sum(1 for _, c, r in calls if c != "OK" and not r),
        "health_checks": len(health_ms),
        "slowest_health_ms": round(max(health_ms, default=0.0), 1),
        "health_over_1_s": sum(1 for ms in health_ms if ms > 1000.0),
        "server_serving_at_the_end": alive,
        "server_exit_status": status,
        "rss_mb_idle": round(idle / 2**20, 1),
        "rss_mb_peak": round(peak / 2**20, 1),
        "rss_mb_after_burst": round(after_burst / 2**20, 1),
        f"rss_mb_{args.settle:g}_s_later": round(settled / 2**20, 1),
        "rss_ratio_to_idle_later": round(settled / max(1, idle), 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; exit 1 when an input escaped, hung, or the gRPC phase failed."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.campaign", description=__doc__)
    parser.add_argument("--inputs", type=int, default=100_000, help="phase-1 inputs (100000)")
    parser.add_argument("--grpc", type=int, default=2000, help="phase-2 calls (2000; 0: skip)")
    parser.add_argument("--threads", type=int, default=4, help="phase-1 caller threads (4)")
    parser.add_argument("--slow", type=float, default=2.0, help="seconds that count as slow")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for memory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--out", type=Path, default=ROOT / "fuzz-out", help="findings folder")
    parser.add_argument(
        "--save-regressions", action="store_true", help="copy findings into tests/fuzz/regressions"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tally, report, worst = fuzz(args, work)
        print(json.dumps(report, indent=2), flush=True)
        if args.save_regressions:
            for folder in ("escaped", "slow"):
                for path in sorted((args.out / folder).glob("*.dcm")):
                    REGRESSIONS.mkdir(parents=True, exist_ok=True)
                    (REGRESSIONS / path.name).write_bytes(path.read_bytes())
        grpc_report: dict[str, Any] = {}
        if args.grpc:
            grpc_report = grpc_phase(args, work, worst)
            print(json.dumps({"grpc": grpc_report}, indent=2), flush=True)
    (args.out / "report.json").write_text(json.dumps({**report, "grpc": grpc_report}, indent=2))
    failed = report["escaped_the_boundary"] or tally.slow
    if grpc_report:
        failed = failed or grpc_report["calls_over_2_s"] or grpc_report["errors_without_a_reason"]
        failed = (
            failed or grpc_report["health_over_1_s"] or not grpc_report["server_serving_at_the_end"]
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
