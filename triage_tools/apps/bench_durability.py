"""``triage bench durability --bundle B --rounds N``: SIGKILL mid-stream, restart, audit."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench durability``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--rounds", type=int, default=3, help="SIGKILL rounds (3)")
    parser.add_argument(
        "--submitters", type=int, default=8, help="concurrent submitting clients (8)"
    )
    parser.add_argument("--kill-after", type=int, default=24, help="acknowledged results")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    """Run the rounds, print a table; exit 1 if any result was lost, duplicated or torn."""
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
                    submitters=args.submitters,
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
