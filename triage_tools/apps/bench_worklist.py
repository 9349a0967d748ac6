"""``triage bench worklist``: what the worklist store costs per study, SQLite beside PostgreSQL.

For each backend (SQLite on a fresh file; PostgreSQL at ``--postgres-url``, or
``$TRIAGE_WORKLIST__URL``) and each replica count of ``--replicas`` (1 and 3): that many stores
on the one database (separate connections and pools, as separate ``triage serve`` replicas
would hold), each with ``--threads`` threads (a server's concurrent requests), then

1. record ``--studies`` distinct results (each what one Triage call writes: the result, its
   item, its audit entry, in one transaction): results written/s and the time of one write;
2. claim them all from all stores at once: claims/s (``FOR UPDATE SKIP LOCKED`` on PostgreSQL);
3. complete every claimed item: completions/s.

The model's time per study (``--model-ms``; default 16.3 ms, ONNX Runtime fp32 DenseNet-121 at
batch 8, 61.3 images/s on this 2-core machine, /work/shared/PERF-NOTES.md) sets the target: one
write should cost well under it, and the store's results/s should be well above the model's
studies/s. Each run uses its own worklist name, so runs on one PostgreSQL database never mix.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROG = "triage bench worklist"
LABELS = ("Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench worklist``."""
    parser.add_argument(
        "--postgres-url", default=None,
        help="PostgreSQL database to measure (default: $TRIAGE_WORKLIST__URL; none: SQLite only)",
    )  # fmt: skip
    parser.add_argument("--studies", type=int, default=1000, help="results per run (1000)")
    parser.add_argument("--replicas", default="1,3", help="replica counts, comma-separated (1,3)")
    parser.add_argument("--threads", type=int, default=4, help="threads per replica (4)")
    parser.add_argument(
        "--result-bytes", type=int, default=4096, help="size of each stored result (4096)"
    )
    parser.add_argument(
        "--model-ms", type=float, default=16.3, help="the model's time per study (16.3 ms)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")


def _parallel(stores: list[Any], threads: int, work: Callable[[Any, int], None]) -> float:
    """Run ``work(store, k)`` on ``threads`` threads per store; seconds until all finished."""
    pool = [
        threading.Thread(target=work, args=(store, s * threads + t))
        for s, store in enumerate(stores)
        for t in range(threads)
    ]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.perf_counter() - t0


def measure(
    open_store: Callable[[], Any], replicas: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One run: ``replicas`` stores from ``open_store``; its figures."""
    from service.core.enums import Decision, Priority
    from service.core.errors import NotFound
    from service.worklist.store import Triaged

    stores = [open_store() for _ in range(replicas)]
    worklist = f"bench-{uuid.uuid4().hex[:8]}"
    blob = os.urandom(args.result_bytes)
    workers = replicas * args.threads
    per_worker = max(1, args.studies // workers)
    write_ms: list[float] = []
    claimed: list[tuple[Any, str, str]] = []  # (store, item id, reader)
    lock = threading.Lock()

    def write(store: Any, k: int) -> None:
        del k
        mine = []
        for _ in range(per_worker):
            t = Triaged(f"2.25.{uuid.uuid4().int}", "bench-bundle", "p1", 0.2, Decision.DEFER,
                        worklist, Priority.ROUTINE, LABELS)  # fmt: skip
            t0 = time.perf_counter()
            store.record(t, lambda p: blob)
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            write_ms.extend(mine)

    def claim(store: Any, k: int) -> None:
        mine: list[tuple[Any, str, str]] = []
        while True:
            try:
                item = store.claim(f"reader-{k}", worklist=worklist, lease_s=600)
            except NotFound:
                break
            mine.append((store, item.item_id, f"reader-{k}"))
        with lock:
            claimed.extend(mine)

    def complete(store: Any, k: int) -> None:
        for _, item_id, reader in claimed[k::workers]:
            store.complete(item_id, reader, dict.fromkeys(LABELS, False))

    try:
        written = per_worker * workers
        write_s = _parallel(stores, args.threads, write)
        claim_s = _parallel(stores, args.threads, claim)
        complete_s = _parallel(stores, args.threads, complete)
    finally:
        for store in stores:
            store.close()
    ms = sorted(write_ms)
    results_per_s = written / write_s
    return {
        "replicas": replicas,
        "threads": workers,
        "results": written,
        "results_per_s": round(results_per_s, 1),
        "write_ms_p50": round(statistics.median(ms), 2),
        "write_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 2),
        "claims": len(claimed),
        "claims_per_s": round(len(claimed) / claim_s, 1),
        "completions_per_s": round(len(claimed) / complete_s, 1),
        "store_ms_per_study": round(1000.0 / results_per_s, 2),
        "model_ms_per_study": args.model_ms,
        "store_share_of_model": round((1000.0 / results_per_s) / args.model_ms, 3),
    }


def run(args: argparse.Namespace) -> int:
    """Measure each backend and replica count; print one table (and JSON)."""
    import functools
    import tempfile

    from service.core.errors import WorklistError
    from service.worklist.open import is_postgres_url
    from service.worklist.store import SqliteWorklistStore
    from triage_common.console import print_table, write_json

    try:
        counts = [int(n) for n in args.replicas.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        print(f"{PROG}: --replicas must list positive counts (1,3)", file=sys.stderr)
        return 2
    if args.studies < 1 or args.threads < 1:
        print(f"{PROG}: --studies and --threads must be positive", file=sys.stderr)
        return 2
    url = args.postgres_url if args.postgres_url is not None else ""
    url = url or os.environ.get("TRIAGE_WORKLIST__URL", "")
    if url and not is_postgres_url(url):
        print(f"{PROG}: --postgres-url must be a postgresql:// URL", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            path = Path(tmp) / f"bench-{n}.db"
            figures = measure(functools.partial(SqliteWorklistStore, path), n, args)
            rows.append({"backend": "sqlite", **figures})
    if url:
        from service.worklist.postgres import PostgresWorklistStore

        for n in counts:
            try:
                figures = measure(lambda: PostgresWorklistStore(url, pool_size=args.threads), n,
                                  args)  # fmt: skip
            except WorklistError as exc:
                print(f"{PROG}: --postgres-url: {exc}", file=sys.stderr)
                return 2
            rows.append({"backend": "postgresql", **figures})
    else:
        print(f"{PROG}: no --postgres-url: SQLite only", file=sys.stderr)
    columns = ["backend", "replicas", "threads", "results", "results_per_s", "write_ms_p50",
               "write_ms_p95", "claims_per_s", "completions_per_s", "store_ms_per_study",
               "store_share_of_model"]  # fmt: skip
    print_table(
        f"worklist store cost (model: {args.model_ms:g} ms per study)",
        columns, [[r[c] for c in columns] for r in rows],
    )  # fmt: skip
    if args.json is not None:
        write_json(args.json, rows)
    return 0
