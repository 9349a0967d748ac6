"""``triage bench durability --bundle B --rounds N``: SIGKILL mid-stream, restart, audit.

With ``--worklist-url postgresql://...`` (or ``TRIAGE_WORKLIST__URL``) and ``--replicas N``:
N replicas share that PostgreSQL worklist; each round one of them is SIGKILLed at a random
moment and restarted while clients submit and readers claim from all of them
(:func:`triage_tools.durability.run_replica_round`). The database must be one you can spare:
the rounds add their studies to it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROG = "triage bench durability"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench durability``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--rounds", type=int, default=3, help="SIGKILL rounds (3)")
    parser.add_argument(
        "--submitters", type=int, default=None, help="concurrent submitting clients (8; 16 "
        "with --worklist-url)",
    )  # fmt: skip
    parser.add_argument("--kill-after", type=int, default=24, help="acknowledged results")
    parser.add_argument(
        "--worklist-url", default=None,
        help="a PostgreSQL worklist (postgresql://...) shared by --replicas servers; default: "
        "$TRIAGE_WORKLIST__URL if set, else one server on a fresh SQLite file per round",
    )  # fmt: skip
    parser.add_argument("--replicas", type=int, default=3, help="servers (3; --worklist-url)")
    parser.add_argument("--readers", type=int, default=3, help="claiming readers (3)")
    parser.add_argument("--seed", type=int, default=0, help="random kill times and victims (0)")
    parser.add_argument(
        "--round-seconds", type=float, default=4.0, help="submitting time per round (4)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    """Run the rounds, print a table; exit 1 if any result was lost, duplicated or torn."""
    url = args.worklist_url
    if url is None:
        url = os.environ.get("TRIAGE_WORKLIST__URL", "")
    if url:
        return _run_replicas(args, url)
    import dataclasses
    import tempfile

    from triage_common.console import print_table, write_json
    from triage_tools.durability import run_round

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            results.append(
                run_round(
                    args.bundle,
                    Path(tmp),
                    submitters=args.submitters or 8,
                    kill_after_acks=args.kill_after,
                    seed_base=r * 100_000,
                )
            )
    columns = ["round", "attempted", "acknowledged", "lost", "duplicated", "half_written",
               "replay_failures", "unacknowledged_but_stored"]  # fmt: skip
    rows = [[i + 1, *(getattr(res, c) for c in columns[1:])] for i, res in enumerate(results)]
    totals = ["total", *(sum(getattr(res, c) for res in results) for c in columns[1:])]
    print_table("worklist durability under SIGKILL", columns, [*rows, totals])
    if args.json is not None:
        write_json(args.json, [dataclasses.asdict(res) for res in results])
    return 0 if all(res.ok for res in results) else 1


def _run_replicas(args: argparse.Namespace, url: str) -> int:
    import dataclasses
    import random

    from service.core.errors import WorklistError
    from service.worklist.open import is_postgres_url
    from triage_common.console import print_table, write_json
    from triage_tools.durability import Replicas, run_replica_round

    if not is_postgres_url(url):
        print(f"{PROG}: --worklist-url must be a postgresql:// URL", file=sys.stderr)
        return 2
    if args.replicas < 2:
        print(f"{PROG}: --replicas must be at least 2", file=sys.stderr)
        return 2
    from service.worklist.postgres import PostgresWorklistStore

    try:
        store = PostgresWorklistStore(url)
    except WorklistError as exc:
        print(f"{PROG}: --worklist-url: {exc}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    clients = args.submitters or 16
    results = []
    replicas = Replicas(args.bundle, url, args.replicas)
    try:
        for r in range(args.rounds):
            results.append(
                run_replica_round(
                    replicas, store, clients=clients, readers=args.readers,
                    seed_base=(args.seed * 1000 + r + 1) * 100_000, rng=rng,
                    duration_s=args.round_seconds,
                )
            )  # fmt: skip
    finally:
        replicas.stop()
        store.close()
    columns = ["round", "killed_replica", "kill_after_s", "attempted", "acknowledged", "lost",
               "duplicated", "half_written", "replay_failures", "claims", "double_claims",
               "abandoned_leases", "leases_not_expired"]  # fmt: skip
    rows = [[i + 1, *(getattr(res, c) for c in columns[1:])] for i, res in enumerate(results)]
    totals = ["total", "", "", *(sum(getattr(res, c) for res in results) for c in columns[3:])]
    print_table(
        f"{args.replicas} replicas on one PostgreSQL worklist, one SIGKILLed per round",
        columns, [*rows, totals],
    )  # fmt: skip
    for i, res in enumerate(results):
        for note in sorted(set(res.notes)):
            print(f"round {i + 1}: {note}", file=sys.stderr)
    if args.json is not None:
        write_json(args.json, [dataclasses.asdict(res) for res in results])
    return 0 if all(res.ok for res in results) else 1
