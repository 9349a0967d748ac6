"""``triage train classifier``: DenseNet on the classifier split, early-stopped on validation AUROC.

Loss: BCE with logits, ``pos_weight = negatives / positives`` per label from the training split
(masked labels excluded). Optimiser AdamW with a cosine schedule over ``--epochs``. Early stopping
on validation macro AUROC (``--patience`` epochs without improvement). Every epoch writes a
resumable checkpoint and appends to ``metrics.json``.

Operating thresholds: per label, the threshold maximising Youden's J (sensitivity +
specificity - 1) on the validation split, with the best weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage train classifier``."""
    parser.add_argument("--data", type=Path, required=True, help="phantom folder or CSV")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument(
        "--config",
        choices=("compact", "densenet121"),
        default="densenet121",
        help="network size: DenseNet-121 or the compact test/demo variant (densenet121)",
    )
    parser.add_argument("--size", type=int, default=None, help="input size (compact 128, full 224)")
    parser.add_argument("--epochs", type=int, default=12, help="most epochs (12)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (1e-3)")
    parser.add_argument(
        "--weight-decay", type=float, default=1e-4, help="AdamW weight decay (1e-4)"
    )
    parser.add_argument(
        "--patience", type=int, default=4, help="epochs without validation gain before stopping (4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of splits, init and order (0)")
    parser.add_argument(
        "--split", default="70/15/15", help="classifier/error-model/test by patient"
    )
    parser.add_argument("--val-fraction", type=float, default=0.15, help="of classifier patients")
    parser.add_argument("--labels", nargs="+", default=None, help="label columns (default: all)")
    parser.add_argument(
        "--uncertain",
        choices=("ignore", "ones", "zeros"),
        default="ignore",
        help="CSV uncertain labels (-1): masked out, positive or negative (ignore)",
    )
    parser.add_argument("--image-root", type=Path, default=None, help="root of CSV image paths")
    parser.add_argument(
        "--cam-layer",
        choices=("relu", "norm5"),
        default="relu",
        help="Grad-CAM layer: the final ReLU or norm5 (relu)",
    )
    parser.add_argument(
        "--no-last-pool",
        action="store_true",
        help="the last transition does not pool: the last dense block and the Grad-CAM maps are "
        "twice as fine along each axis (8x8 instead of 4x4 at 128 px), at more compute",
    )
    parser.add_argument("--init-weights", type=Path, default=None, help="torchvision/CheXNet file")
    parser.add_argument("--fold-rgb", action="store_true", help="fold a 3-channel conv0 to 1")
    parser.add_argument(
        "--reinit-head", action="store_true", help="re-initialise on label mismatch"
    )
    parser.add_argument(
        "--hflip", action="store_true", help="allow horizontal flips (off: laterality)"
    )
    parser.add_argument("--max-images", type=int, default=None, help="cap training images (tests)")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt")


def run(args: argparse.Namespace) -> int:
    """Train and write the run; returns the exit status (2: weights that cannot be imported)."""
    import sys

    from models.classifier_loop import ClassifierTrainingOptions, train_classifier
    from models.weights import WeightsError

    prog = "triage train classifier"
    if args.init_weights is not None and not args.init_weights.is_file():
        print(f"{prog}: --init-weights {args.init_weights}: file does not exist", file=sys.stderr)
        return 2

    options = ClassifierTrainingOptions(
        data=args.data,
        out=args.out,
        config=args.config,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
        split=args.split,
        val_fraction=args.val_fraction,
        labels=tuple(args.labels) if args.labels else None,
        uncertain=args.uncertain,
        image_root=args.image_root,
        cam_layer=args.cam_layer,
        last_pool=not args.no_last_pool,
        init_weights=args.init_weights,
        fold_rgb=args.fold_rgb,
        reinit_head=args.reinit_head,
        hflip=args.hflip,
        max_images=args.max_images,
        resume=args.resume,
    )
    try:
        train_classifier(options)
    except WeightsError as exc:  # one line naming the flag that would allow it, no traceback
        print(f"{prog}: --init-weights {args.init_weights}: {exc.for_cli()}", file=sys.stderr)
        return 2
    return 0
