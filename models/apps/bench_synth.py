"""``triage bench synth``: phantom rendering throughput in one process (studies per second)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench synth``."""
    parser.add_argument("--studies", type=int, default=60, help="studies to render (60)")
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--scenario", default="confounded", help="scenario name or file")
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed rounds per stage; the median is reported (3)"
    )


def run(args: argparse.Namespace) -> int:
    """Time rendering alone, then rendering plus writing (Explicit VR DICOM, masks, labels)."""
    import sys

    from models.phantoms.benchmark import run_benchmark
    from models.phantoms.scenario import ScenarioError, load_scenario
    from triage_common.console import print_table

    if args.studies < 1 or args.rounds < 1 or not 32 <= args.size <= 4096:
        print(
            "triage bench synth: --studies and --rounds must be >= 1 and --size in [32, 4096]",
            file=sys.stderr,
        )
        return 2
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"triage bench synth: {exc}", file=sys.stderr)
        return 2
    results = run_benchmark(scenario, args.studies, args.size, args.seed, args.rounds)
    print_table(
        f"Phantom synthesis, {args.size}x{args.size}, one process, median of {args.rounds} rounds",
        ["stage", "studies", "images", "wall s", "studies/s", "slowest round /s",
         "CPU ms/study", "page faults/study"],
        [
            [r.stage, r.studies, r.images, r.wall_s, r.studies_per_s, r.slowest_per_s,
             r.cpu_ms_per_study, r.page_faults_per_study]
            for r in results
        ],
    )  # fmt: skip
    return 0
