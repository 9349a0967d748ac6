"""``triage contact-sheet``: a PNG grid of phantoms per finding and per site, masks outlined."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage contact-sheet``."""
    parser.add_argument("data", type=Path, help="a dataset folder written by `triage synth`")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--per-row", type=int, default=6, help="images per row (6)")


def run(args: argparse.Namespace) -> int:
    """Draw the contact sheet."""
    import sys

    from models.phantoms.sheet import build_contact_sheet

    if not (args.data / "labels.csv").is_file():
        print(f"triage contact-sheet: {args.data} has no labels.csv (not a phantom dataset)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.per_row < 1:
        print("triage contact-sheet: --per-row must be at least 1", file=sys.stderr)
        return 2
    tiles = build_contact_sheet(args.data, args.out, args.per_row)
    print(f"wrote {tiles} images to {args.out}")
    return 0
