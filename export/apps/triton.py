"""``triage export triton``: a Triton Inference Server model repository from a model bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage export triton``."""
    parser.add_argument("--bundle", type=Path, required=True, help="bundle from `export onnx`")
    parser.add_argument("--out", type=Path, required=True, help="model repository folder")
    parser.add_argument("--max-batch", type=int, default=8, help="max_batch_size")
    parser.add_argument("--instances", type=int, default=1, help="model instances")
    parser.add_argument("--kind", choices=("cpu", "gpu"), default="cpu", help="instance kind")
    parser.add_argument("--name", default="cxr_triage", help="model name in the repository")
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="dynamic batching: longest wait for a fuller batch (microseconds)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the repository; returns the exit status."""
    from export.triton import CONFIG, TritonOptions, write_triton_repository
    from triage_common.bundle_format import BundleError

    options = TritonOptions(
        max_batch=args.max_batch,
        instances=args.instances,
        kind=args.kind,
        model_name=args.name,
        max_queue_delay_us=args.max_queue_delay_us,
    )
    try:
        model_dir = write_triton_repository(args.bundle, args.out, options)
    except (BundleError, ValueError, OSError) as exc:
        print(f"triage export triton: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {model_dir / CONFIG} and {model_dir / '1' / 'model.onnx'}")
    print(f"serve with: tritonserver --model-repository {args.out.resolve()}")
    return 0
