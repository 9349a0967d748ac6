"""``triage train autoencoder``: the small convolutional autoencoder Latent Shift decodes with.

Trains on every frontal image of the dataset except a held-out share of patients, with the
elastic (MSE + MAE) loss, and prints the reconstruction quality (PSNR, SSIM, MAE in display
units) on the held-out images. Writes ``autoencoder.pt`` and ``autoencoder.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage train autoencoder``."""
    parser.add_argument("--data", type=Path, required=True, help="phantom folder or CSV")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument("--size", type=int, default=128, help="input size, a multiple of 16 (128)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (8)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init and order (0)")
    parser.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.1,
        help="share of patients held out for the reconstruction report (0.1)",
    )
    parser.add_argument("--max-images", type=int, default=None, help="cap training images (tests)")
    parser.add_argument(
        "--split-from",
        type=Path,
        default=None,
        help="a classifier run: train on its training images and report on its validation "
        "images (patient-disjoint; reuses its preprocessed arrays) instead of --heldout-fraction",
    )


def run(args: argparse.Namespace) -> int:
    """Train and write the run; exit status 2 on a refused flag or dataset."""
    import sys

    prog = "triage train autoencoder"
    if args.size < 32 or args.size % 16 != 0:
        print(f"{prog}: --size {args.size}: must be a multiple of 16, at least 32", file=sys.stderr)
        return 2
    if args.epochs < 1 or args.batch_size < 1:
        print(f"{prog}: --epochs and --batch-size must be at least 1", file=sys.stderr)
        return 2
    if not 0.0 < args.heldout_fraction < 1.0:
        print(
            f"{prog}: --heldout-fraction {args.heldout_fraction}: must be in (0, 1)",
            file=sys.stderr,
        )
        return 2
    if args.split_from is not None and not (args.split_from / "split.json").is_file():
        print(f"{prog}: --split-from {args.split_from}: has no split.json", file=sys.stderr)
        return 2
    if not args.data.exists():
        print(f"{prog}: --data {args.data}: does not exist", file=sys.stderr)
        return 2

    from models.autoencoder import AutoencoderTrainingOptions, train_autoencoder

    options = AutoencoderTrainingOptions(
        data=args.data,
        out=args.out,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        heldout_fraction=args.heldout_fraction,
        max_images=args.max_images,
        split_from=args.split_from,
    )
    try:
        train_autoencoder(options)
    except ValueError as exc:  # an unreadable or too small dataset: one line, no traceback
        print(f"{prog}: --data {args.data}: {exc}", file=sys.stderr)
        return 2
    return 0
