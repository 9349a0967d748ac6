"""``triage export tensorrt``: serialized TensorRT engines (FP16, FP32) from a model bundle.

Needs the ``tensorrt`` Python package and a CUDA GPU; elsewhere it exits 3 naming what is
missing. Engines are tied to the GPU model and TensorRT version that built them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage export tensorrt``."""
    parser.add_argument("--bundle", type=Path, required=True, help="bundle from `export onnx`")
    parser.add_argument("--out", type=Path, required=True, help="folder for the engines")
    parser.add_argument(
        "--max-batch", type=int, default=8, help="largest batch of the optimisation profile"
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=("fp16", "fp32"),
        default=["fp16", "fp32"],
        help="engines to build (default: both)",
    )
    parser.add_argument(
        "--workspace-gib", type=float, default=4.0, help="builder workspace limit in GiB"
    )


def run(args: argparse.Namespace) -> int:
    """Build the engines; exit 3 when TensorRT or a GPU is missing, 1 on other failures."""
    from export.tensorrt import ENGINES_JSON, MissingDependency, build_engines
    from triage_common.bundle_format import BundleError
    from triage_common.console import print_table

    try:
        info = build_engines(
            args.bundle,
            args.out,
            max_batch=args.max_batch,
            precisions=args.precision,
            workspace_bytes=int(args.workspace_gib * (1 << 30)),
        )
    except MissingDependency as exc:
        print(f"triage export tensorrt: {exc}", file=sys.stderr)
        return 3
    except (BundleError, ValueError, RuntimeError) as exc:
        print(f"triage export tensorrt: {exc}", file=sys.stderr)
        return 1
    print_table(
        f"TensorRT {info['tensorrt']} engines for bundle {info['bundle_id']} on {info['device']}",
        ["precision", "file", "MiB", "profile (min / opt / max)"],
        [
            (
                p,
                e["file"],
                e["bytes"] / (1 << 20),
                f"{e['profile']['min']} / {e['profile']['opt']} / {e['profile']['max']}",
            )
            for p, e in info["engines"].items()
        ],
    )
    print(f"wrote {args.out / ENGINES_JSON}")
    return 0
