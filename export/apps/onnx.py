"""``triage export onnx``: a classifier run + an error-model run -> a verified model bundle.

The bundle folder holds ``triage.onnx`` (classifier, in-graph Grad-CAM maps, OOD score and error
model in one graph; input ``image`` [batch, C, S, S]) and ``manifest.json``. ONNX Runtime
(optimisation ALL, CPU) is checked against PyTorch before the manifest is written; a bundle that
fails is not written and the command exits 1 naming the deviation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage export onnx``."""
    parser.add_argument("--classifier", type=Path, required=True, help="classifier run folder")
    parser.add_argument(
        "--error-model", type=Path, required=True, help="error-model run folder (same classifier)"
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (default 17; 18 with --exporter dynamo)"
    )
    parser.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx exporter (default: torchscript, the faster one)",
    )
    parser.add_argument(
        "--defer-cost",
        type=float,
        default=0.2,
        help="default defer cost recorded in the manifest (defer when P(error) exceeds it)",
    )
    parser.add_argument(
        "--parity-images", type=int, default=8, help="images for the ONNX Runtime parity check"
    )


def run(args: argparse.Namespace) -> int:
    """Export the bundle; returns the exit status (2: bad runs, 1: export or parity failed)."""
    from export.bundle import OnnxExportOptions, ParityFailure, export_bundle
    from export.onnx_export import ExportError
    from export.sources import SourceError
    from triage_common.console import print_table

    options = OnnxExportOptions(
        classifier=args.classifier,
        error_model=args.error_model,
        out=args.out,
        opset=args.opset,
        exporter=args.exporter,
        defer_cost=args.defer_cost,
        parity_images=args.parity_images,
    )
    try:
        manifest = export_bundle(options)
    except (SourceError, ValueError) as exc:
        print(f"triage export onnx: {exc}", file=sys.stderr)
        return 2
    except (ParityFailure, ExportError) as exc:
        print(f"triage export onnx: {exc}", file=sys.stderr)
        return 1
    parity = manifest["parity"]
    print_table(
        f"bundle {manifest['bundle_id']} -> {args.out} (parity: {parity['source']}, "
        f"batches {parity['batch_sizes']})",
        ["output", "max deviation", "tolerance", "measure"],
        [
            (name, f"{dev:.2e}", f"{parity['tolerances'][name]:.0e}", parity["metrics"][name])
            for name, dev in parity["max_deviation"].items()
        ],
    )
    return 0
