"""``triage bench error-levers``: what the Grad-CAM maps add to the error model, lever by lever.

See :mod:`models.levers` for the variants. Prints one table (AUROC of predicting a study error
at all, training and held-out sites; the paired differences against the probabilities-only
variant and against the same variant with maps permuted among similar studies, with
patient-level bootstrap 95 % intervals) and writes everything as JSON (``--out``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench error-levers``."""
    parser.add_argument("--data", type=Path, required=True, help="the classifier's dataset")
    parser.add_argument("--classifier", type=Path, required=True, help="classifier run folder")
    parser.add_argument(
        "--evaluation", type=Path, required=True, help="a fresh labelled phantom folder"
    )
    parser.add_argument(
        "--extra-data",
        type=Path,
        nargs="+",
        default=[],
        help="more labelled sets the classifier never saw, as extra error-model examples",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--views", type=int, default=4, help="augmented views per image (4)")
    parser.add_argument("--seeds", type=int, default=3, help="fits averaged per variant (3)")
    parser.add_argument("--permutations", type=int, default=3, help="map permutations (3)")
    parser.add_argument("--resamples", type=int, default=400, help="bootstrap resamples (400)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="subset of P G R C RC GRC DUP (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (0)")


def run(args: argparse.Namespace) -> int:
    """Run the levers; exit 0 with the JSON written, 2 on bad input."""
    import sys

    from models.levers import VARIANTS, LeverOptions, run_levers
    from triage_common.console import print_table, write_json

    variants = tuple(args.variants or VARIANTS)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        print(f"triage bench error-levers: --variants: unknown {unknown}", file=sys.stderr)
        return 2
    paths = [("--data", args.data), ("--classifier", args.classifier)]
    paths += [("--evaluation", args.evaluation), *(("--extra-data", p) for p in args.extra_data)]
    for flag, path in paths:
        if not path.exists():
            print(f"triage bench error-levers: {flag} {path} does not exist", file=sys.stderr)
            return 2
    try:
        result = run_levers(
            LeverOptions(
                data=args.data,
                classifier=args.classifier,
                evaluation=args.evaluation,
                extra=tuple(args.extra_data),
                views=args.views,
                seeds=args.seeds,
                permutations=args.permutations,
                resamples=args.resamples,
                variants=variants,
                seed=args.seed,
            )
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"triage bench error-levers: {exc}", file=sys.stderr)
        return 2
    write_json(args.out, result)

    def diff(item: dict[str, float] | None) -> str:
        if item is None:
            return "–"
        return f"{item['difference']:+.3f} [{item['low']:+.3f}, {item['high']:+.3f}]"

    held = "held-out site" if "held-out site" in result["error_rate"] else "all"
    print_table(
        f"error-detection AUROC on {result['evaluation_studies']} fresh studies (maps "
        f"{result['cam_shape'][0]}x{result['cam_shape'][1]}, {result['training_examples']} "
        "training examples)",
        [
            "variant",
            "validation",
            "all",
            "training sites",
            held,
            f"− P ({held})",
            f"− permuted maps ({held})",
        ],
        [
            (
                name,
                v["validation_auroc"],
                v["auroc"]["all"],
                v["auroc"].get("training sites", float("nan")),
                v["auroc"][held],
                diff(v.get("minus_P", {}).get(held)),
                diff(v.get("minus_permuted", {}).get(held)),
            )
            for name, v in result["variants"].items()
        ],
    )
    print(f"written to {args.out}")
    return 0
