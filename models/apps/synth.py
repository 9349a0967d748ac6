"""``triage synth``: render a synthetic chest-radiograph dataset as DICOM files plus labels.

Only argparse and the standard library are imported at module level; the renderer is imported
when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _size(text: str) -> int:
    value = int(text)
    if not 32 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"must be between 32 and 4096 pixels (got {value})")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (got {value})")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage synth``."""
    parser.add_argument("out", type=Path, help="output folder (created if missing)")
    parser.add_argument("--studies", type=_positive, default=200, help="number of studies (200)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed (0); same seed, same bytes"
    )
    parser.add_argument(
        "--scenario",
        default="confounded",
        help="built-in scenario name (confounded, balanced) or a scenario JSON file",
    )
    parser.add_argument("--size", type=_size, default=512, help="image width and height (512)")
    parser.add_argument(
        "--syntax",
        choices=("explicit", "rle", "j2k", "mixed"),
        default="explicit",
        help="transfer syntax: Explicit VR Little Endian, RLE Lossless, JPEG 2000 Lossless, "
        "or mixed (varies per study)",
    )
    parser.add_argument("--workers", type=_positive, default=1, help="worker processes (1)")
    parser.add_argument(
        "--lateral-fraction",
        type=_fraction,
        default=None,
        help="probability that a non-portable study also gets a lateral (LL) view "
        "(default: the scenario's, 0.2 in the built-in ones)",
    )


def run(args: argparse.Namespace) -> int:
    """Generate the dataset; prints the per-site summary tables."""
    import sys

    from models.phantoms.generate import SynthConfig, synthesize
    from models.phantoms.scenario import ScenarioError, load_scenario
    from models.phantoms.summary import print_summary

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"triage synth: {exc}", file=sys.stderr)
        return 2
    result = synthesize(
        SynthConfig(
            out=args.out,
            studies=args.studies,
            seed=args.seed,
            scenario=scenario,
            scenario_source=str(args.scenario),
            size=args.size,
            syntax=args.syntax,
            workers=args.workers,
            lateral_fraction=args.lateral_fraction,
        )
    )
    print_summary(result.summary)
    print(
        f"wrote {result.studies} studies ({result.images} images, {result.patients} patients) "
        f"to {result.out}"
    )
    return 0
