"""``triage bench model``: images/s of the bundle graph, plain ONNX and eager Grad-CAM."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench model``."""
    parser.add_argument("--size", type=int, default=224, help="input size in pixels")
    parser.add_argument(
        "--config", default="densenet121", help="DenseNet configuration (densenet121, compact)"
    )
    parser.add_argument("--labels", type=int, default=4, help="number of labels")
    parser.add_argument("--iterations", type=int, default=20, help="timed calls per path and batch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 8], help="batch sizes to time"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, optionally write JSON; returns 0."""
    from export.bench import BenchOptions, run_benchmark, table_rows
    from triage_common.console import print_table, write_json

    if args.iterations < 1 or any(b < 1 for b in args.batch_sizes):
        raise SystemExit("--iterations and --batch-sizes must be positive")
    options = BenchOptions(
        size=args.size,
        config=args.config,
        labels=args.labels,
        iterations=args.iterations,
        warmup=args.warmup,
        batch_sizes=tuple(args.batch_sizes),
    )
    result = run_benchmark(options)
    columns, rows = table_rows(result)
    print_table(
        f"model throughput: {args.config} {args.size}x{args.size}, {args.labels} labels, "
        f"{result['threads']['torch']} torch threads, median of {args.iterations} calls",
        columns,
        rows,
    )
    if args.json is not None:
        write_json(args.json, result)
    return 0
