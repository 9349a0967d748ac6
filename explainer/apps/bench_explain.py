"""``triage bench explain``: what a running explainer worker costs triage, in one run.

Starts ``triage serve`` (the real server, worklist on a temporary SQLite file, ``explain`` on,
every study deferred so every call queues a job) and queues ``--backlog`` jobs first. Then, in
each of ``--rounds`` rounds, it sends ``--studies`` fresh RG1 studies (distinct Study Instance
UIDs, ``--concurrency`` client threads) twice: with no worker, and with a ``triage
explain-worker`` process making counterfactuals from the backlog meanwhile (started before the
timed calls and given its first job before they begin). It reports, per arrangement, studies/s
and p50/p99 latency (medians over rounds), the ratio worker-on over worker-off, and the
counterfactual jobs the worker finished during the timed calls. On a machine where server,
worker and load generator share the cores the ratio shows the CPU they compete for; the worker
holds no lock the request path waits on (its transactions are a few milliseconds).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from explainer.apps.settings_args import add_model_args


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench explain``."""
    add_model_args(parser)
    parser.add_argument("--studies", type=int, default=40, help="timed calls per cell (40)")
    parser.add_argument("--concurrency", type=int, default=1, help="client threads (1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both cells (3)")
    parser.add_argument("--backlog", type=int, default=60, help="jobs queued before timing (60)")
    parser.add_argument("--worker-threads", type=int, default=1, help="the worker's --threads (1)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")


def run(args: argparse.Namespace) -> int:
    """Run the rounds and print the table; exit 2 on a refused flag."""
    prog = "triage bench explain"
    if min(args.studies, args.concurrency, args.rounds, args.backlog) < 1:
        print(f"{prog}: --studies, --concurrency, --rounds, --backlog must be >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    for flag in ("bundle", "classifier", "autoencoder"):
        if not getattr(args, flag).exists():
            print(f"{prog}: --{flag} {getattr(args, flag)}: does not exist", file=sys.stderr)
            return 2

    import grpc

    from service.worklist.store import SqliteWorklistStore
    from triage_common.console import print_table, write_json
    from triage_tools.apps.bench_serve import (
        LoadGenerator,
        _default_file,
        _percentile,
        _uid_variants,
        encode_study,
        run_cell,
    )
    from triage_tools.serve_process import ServeProcess

    work = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    db = work / "worklist.db"
    sets = ["--set", f"worklist.path={db}", "--set", "explain.enabled=true"]
    sets += ["--set", "policy.defer_cost=0.0"]  # every study deferred: every call queues a job
    server = ServeProcess(["--bundle", str(args.bundle), *sets])
    server.wait_ready()
    data = _default_file("RG1_UNCR.dcm").read_bytes()
    needed = args.backlog + 2 * args.rounds * args.studies + args.rounds
    studies = [encode_study(d) for d in _uid_variants(data, needed)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    worker_cmd = [sys.executable, "-m", "triage_tools.cli", "explain-worker",
                  "--bundle", str(args.bundle), "--classifier", str(args.classifier),
                  "--autoencoder", str(args.autoencoder), "--worklist", str(db),
                  "--poll-seconds", "0.2", "--threads", str(args.worker_threads)]  # fmt: skip
    cells: dict[str, list[dict[str, float]]] = {"worker off": [], "worker on": []}
    store = SqliteWorklistStore(db)
    try:
        with grpc.insecure_channel(server.address) as channel:
            load = LoadGenerator(channel)
            used = 0

            def timed() -> dict[str, float]:
                nonlocal used
                batch = studies[used : used + args.studies]
                used += args.studies
                latencies, errors, seconds = run_cell(
                    load.send, batch, args.concurrency, len(batch)
                )
                if errors:
                    raise RuntimeError(f"{errors} triage call(s) failed")
                return {
                    "studies_per_s": len(latencies) / seconds,
                    "p50_ms": _percentile(latencies, 0.5),
                    "p99_ms": _percentile(latencies, 0.99),
                }

            for study in studies[: args.backlog]:
                load.send(study)
            used = args.backlog
            for _ in range(args.rounds):
                cells["worker off"].append(timed())
                before = store.explanation_counts().get("DONE", 0)
                worker = subprocess.Popen(
                    worker_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                try:
                    deadline = time.monotonic() + 120
                    while store.explanation_counts().get("DONE", 0) == before:
                        if time.monotonic() > deadline or worker.poll() is not None:
                            raise RuntimeError("the explainer worker made no job")
                        time.sleep(0.05)
                    start_done = store.explanation_counts().get("DONE", 0)
                    tick = time.perf_counter()
                    cell = timed()
                    made = store.explanation_counts().get("DONE", 0) - start_done
                    cell["explanations_per_s"] = made / (time.perf_counter() - tick)
                    cells["worker on"].append(cell)
                finally:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(60)
    finally:
        store.close()
        server.stop()

    def median(name: str, key: str) -> float:
        return statistics.median(c[key] for c in cells[name])

    off_rate, on_rate = median("worker off", "studies_per_s"), median("worker on", "studies_per_s")
    report: dict[str, Any] = {
        "concurrency": args.concurrency,
        "worker_threads": args.worker_threads,
        "studies_per_cell": args.studies,
        "rounds": cells,
        "median": {name: {k: median(name, k) for k in cells[name][0]} for name in cells},
        "throughput_ratio_on_over_off": on_rate / off_rate,
        "p50_ratio_on_over_off": median("worker on", "p50_ms") / median("worker off", "p50_ms"),
    }
    rows = [
        (name, median(name, "studies_per_s"), median(name, "p50_ms"), median(name, "p99_ms"),
         median(name, "explanations_per_s") if name == "worker on" else 0.0)
        for name in cells
    ]  # fmt: skip
    print_table(
        f"triage with and without an explainer worker ({args.rounds} rounds, medians; "
        f"concurrency {args.concurrency}, worker threads {args.worker_threads})",
        ("arrangement", "studies/s", "p50 ms", "p99 ms", "explanations/s"),
        rows,
    )
    print(
        f"worker on / off: throughput {report['throughput_ratio_on_over_off']:.2f}, "
        f"p50 latency {report['p50_ratio_on_over_off']:.2f}"
    )
    if args.out is not None:
        write_json(args.out, report)
    return 0
