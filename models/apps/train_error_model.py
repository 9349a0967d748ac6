"""``triage train error-model``: the Grad-CAM error model, the OOD guards and the baselines.

Trained only on the error-model split (patients the classifier never saw), from the classifier's
outputs on those images (the clean image plus ``--views`` augmented views each, so the error
model sees the classifier fail in more ways than one pass shows), plus every image of the
``--extra-data`` sets (labelled studies the classifier never saw). Three predictors are fitted
on the same examples: the Grad-CAM error model, the probabilities-only network of the same head
and the image-only direct (DUP-style) predictor; ``--serve`` says which of the first two the
bundle serves (``auto``: the better on the inner validation patients). The OOD guards' Gaussians
come from the classifier's training split; their thresholds are the ``--ood-percentile`` of the
scores on the error-model split. Every baseline (and softmax response, entropy) is scored on the
test split and the held-out site, per site.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage train error-model``."""
    parser.add_argument("--data", type=Path, required=True, help="the classifier's dataset")
    parser.add_argument("--classifier", type=Path, required=True, help="classifier run folder")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument("--epochs", type=int, default=150, help="most epochs (150)")
    parser.add_argument("--batch-size", type=int, default=128, help="studies per step (128)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (3e-3)")
    parser.add_argument(
        "--patience",
        type=int,
        default=25,
        help="epochs without validation gain before stopping (25)",
    )
    parser.add_argument("--views", type=int, default=4, help="augmented views per image")
    parser.add_argument("--grid", type=int, default=8, help="CAM grid the error model reads")
    parser.add_argument(
        "--ood-percentile",
        type=float,
        default=99.0,
        help="OOD threshold: this percentile of the training images' scores (99)",
    )
    parser.add_argument(
        "--extra-data",
        type=Path,
        nargs="+",
        default=[],
        help="more labelled sets the classifier never saw (phantom folders or CSVs): every "
        "image adds one error-model training example",
    )
    parser.add_argument(
        "--serve",
        choices=("auto", "gradcam", "probs_only", "direct"),
        default="auto",
        help="the error model the bundle serves: the Grad-CAM error model, the probabilities-"
        "only network, the image-only direct predictor, or whichever validates best (auto)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of init and order (0)")
    parser.add_argument("--image-root", type=Path, default=None, help="root of CSV image paths")


def run(args: argparse.Namespace) -> int:
    """Train and write the run; returns the exit status."""
    from models.error_loop import ErrorTrainingOptions, train_error_model

    train_error_model(
        ErrorTrainingOptions(
            data=args.data,
            classifier=args.classifier,
            out=args.out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            patience=args.patience,
            views=args.views,
            grid=args.grid,
            ood_percentile=args.ood_percentile,
            seed=args.seed,
            image_root=args.image_root,
            extra_data=tuple(args.extra_data),
            serve=args.serve,
        )
    )
    return 0
