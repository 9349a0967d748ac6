"""``triage explain-worker``: make the counterfactuals of deferred items, off the request path.

Runs beside ``triage serve`` on the same worklist database (``--worklist FILE`` for SQLite,
``--worklist-url`` for PostgreSQL), with the bundle the server serves, the classifier run it was
exported from and an autoencoder run. The server queues a job with every deferred result when
``explain.enabled`` is on; this worker leases them one at a time, stores each explanation
(``Worklist.GetExplanation`` returns it) and queues its Secondary Capture for the destinations
that take SCs. Stops on SIGTERM or SIGINT after the job in hand; ``--drain`` stops when nothing
is due. Several workers may share a database (leases).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from explainer.apps.settings_args import add_model_args, settings_from


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage explain-worker``."""
    add_model_args(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--worklist", type=Path, help="the server's SQLite worklist file")
    where.add_argument(
        "--worklist-url",
        help="the server's PostgreSQL worklist (postgresql://...; TRIAGE_WORKLIST__URL works too)",
    )
    parser.add_argument("--drain", action="store_true", help="stop when no job is due")
    parser.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="wait when idle (2)")
    parser.add_argument("--lease-seconds", type=float, default=300.0, help="lease of one job (300)")
    parser.add_argument(
        "--max-attempts", type=int, default=3, help="claims of one job before it FAILS (3)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="also write ITEM/FINDING.gif|.png here"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: beside `triage serve` on one machine it leaves the other cores "
        "to triage; raise it on a machine of its own)",
    )


def run(args: argparse.Namespace) -> int:
    """Work until stopped; exit 2 on a refused flag, model or database."""
    prog = "triage explain-worker"
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"{prog}: --threads must be at least 1", file=sys.stderr)
        return 2
    # idle OpenMP threads sleep instead of spinning on cores the server needs (set before torch)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.max_attempts < 1 or args.lease_seconds <= 0 or args.poll_seconds <= 0:
        print(f"{prog}: --max-attempts, --lease-seconds, --poll-seconds must be positive",
              file=sys.stderr)  # fmt: skip
        return 2

    import torch

    from explainer.core import ExplainerMismatch, load_explainer
    from explainer.worker import ExplainWorker, WorkerOptions
    from service.core.errors import WorklistError
    from service.worklist.open import open_worklist

    torch.set_num_threads(args.threads)
    try:
        explainer = load_explainer(args.bundle, args.classifier, args.autoencoder, settings)
    except (FileNotFoundError, ExplainerMismatch, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_worklist(url=args.worklist_url or "", path=str(args.worklist or ""))
    except WorklistError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    assert store is not None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = ExplainWorker(
        store,
        explainer,
        WorkerOptions(
            lease_seconds=args.lease_seconds,
            max_attempts=args.max_attempts,
            poll_seconds=args.poll_seconds,
            out_dir=args.out,
        ),
    )
    print(
        f"{prog}: bundle {explainer.bundle_id}, autoencoder {explainer.explainer_id}, "
        f"owner {worker.options.owner}, {args.threads} thread(s)",
        flush=True,
    )
    try:
        taken = worker.run(stop, max_jobs=args.max_jobs, drain=args.drain)
    finally:
        store.close()
    print(f"{prog}: {taken} job(s) taken, {worker.done} explained, {worker.failed} failed")
    return 0
