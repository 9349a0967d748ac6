"""The classifier training loop behind ``triage train classifier``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from models.densenet import DenseNet, config_by_name
from models.runs import CLASSIFIER_FORMAT, make_split, read_split, split_indices, write_split
from models.splits import SplitFractions
from models.training import (
    augment,
    batches,
    classifier_outputs,
    masked_bce,
    save_atomic,
    seed_everything,
)
from models.weights import load_weights
from triage_common.console import print_table, track, write_json
from triage_common.datasets import ImageTable, load_dataset, preprocessed_images
from triage_common.logging import get_logger
from triage_common.metrics import auroc, macro_auroc, youden_threshold
from triage_common.preprocess import PreprocessSpec

log = get_logger(__name__)

DEFAULT_SIZE = {"compact": 128, "densenet121": 224}
THRESHOLD_RULE = "per label, Youden's J (sensitivity + specificity - 1) on the validation split"


@dataclass(frozen=True)
class ClassifierTrainingOptions:
    """Everything ``triage train classifier`` takes."""

    data: Path
    out: Path
    config: str = "densenet121"
    size: int | None = None
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 4
    seed: int = 0
    split: str = "70/15/15"
    val_fraction: float = 0.15
    labels: tuple[str, ...] | None = None
    uncertain: Literal["ignore", "ones", "zeros"] = "ignore"
    image_root: Path | None = None
    cam_layer: str = "relu"
    last_pool: bool = True
    init_weights: Path | None = None
    fold_rgb: bool = False
    reinit_head: bool = False
    hflip: bool = False
    max_images: int | None = None
    resume: bool = False


def positive_weights(labels: npt.NDArray[np.float64]) -> Tensor:
    """negatives / positives per label (1 when a label has no positives)."""
    pos = np.nansum(labels == 1, axis=0).astype(np.float64)
    neg = np.nansum(labels == 0, axis=0).astype(np.float64)
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)


def _val_metrics(
    model: DenseNet, images: npt.NDArray[np.float32], labels: npt.NDArray[np.float64], pw: Tensor
) -> tuple[float, list[float], float, npt.NDArray[np.float32]]:
    probs, _, _ = classifier_outputs(model, images)
    logits = torch.logit(torch.from_numpy(probs).clamp(1e-7, 1 - 1e-7))
    loss = float(masked_bce(logits, torch.from_numpy(labels).float(), pw))
    per_label = [auroc(labels[:, j], probs[:, j]) for j in range(labels.shape[1])]
    return macro_auroc(labels, probs), per_label, loss, probs


def _prepare(options: ClassifierTrainingOptions) -> tuple[ImageTable, dict[str, Any]]:
    table = load_dataset(
        options.data, options.labels, uncertain=options.uncertain, image_root=options.image_root
    )
    if len(table) == 0:
        raise ValueError(f"{options.data} has no frontal images")
    if options.resume and (options.out / "split.json").exists():
        return table, read_split(options.out)
    fractions = SplitFractions.parse(options.split)
    fractions = SplitFractions(
        fractions.classifier, fractions.error_model, fractions.test, options.val_fraction
    )
    return table, make_split(table, fractions, options.seed)


def train_classifier(options: ClassifierTrainingOptions) -> dict[str, Any]:
    """Train, write ``classifier.pt`` / ``classifier.json`` / ``metrics.json``; return the meta."""
    started = time.monotonic()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    gen = seed_everything(options.seed)
    table, split = _prepare(options)
    write_split(out, split)
    train_idx = split_indices(table, split, "classifier_train")
    val_idx = split_indices(table, split, "classifier_val")
    if options.max_images is not None:
        train_idx = train_idx[: options.max_images]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(
            f"the split leaves {len(train_idx)} training and {len(val_idx)} validation images: "
            "use more studies or patients"
        )
    size = options.size or DEFAULT_SIZE[options.config]
    spec = PreprocessSpec(size=size)
    cache = options.data / ".cache" if options.data.is_dir() else None
    used = np.concatenate([train_idx, val_idx])
    images = preprocessed_images(table.subset(used), spec, cache)
    x_train, x_val = images[: len(train_idx)], images[len(train_idx) :]
    y_train, y_val = table.labels[train_idx], table.labels[val_idx]

    config = config_by_name(
        options.config, len(table.label_names), 1, options.cam_layer, options.last_pool
    )
    model = DenseNet(config)
    if options.init_weights is not None:
        load_weights(  # logs what it loaded, renamed, folded and reinitialised
            model,
            options.init_weights,
            fold_rgb=options.fold_rgb,
            head="reinit" if options.reinit_head else "refuse",
        )
    # channels_last runs DenseNet's convolutions about 1.3-1.5x faster on this CPU.
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.lr, weight_decay=options.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(options.epochs, 1))
    pw = positive_weights(y_train)
    history: list[dict[str, Any]] = []
    best_auc, best_epoch, stale = -1.0, -1, 0
    best_state: dict[str, Tensor] = {k: v.clone() for k, v in model.state_dict().items()}
    start_epoch = 0
    checkpoint_path = out / "checkpoint.pt"
    if options.resume and checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["generator"])
        best_auc, best_epoch, stale = ckpt["best_auc"], ckpt["best_epoch"], ckpt["stale"]
        best_state, history, start_epoch = ckpt["best_state"], ckpt["history"], ckpt["epoch"] + 1
        log.info("resumed", epoch=start_epoch)

    y_train_t = torch.from_numpy(y_train).float()
    for epoch in range(start_epoch, options.epochs):
        if stale >= options.patience:
            break
        tick = time.monotonic()
        model.train()
        losses = []
        n_batches = (len(x_train) + options.batch_size - 1) // options.batch_size
        for idx in track(
            batches(len(x_train), options.batch_size, gen), n_batches, f"epoch {epoch + 1}"
        ):
            if len(idx) < 2:
                continue  # batch norm needs two samples
            x = augment(torch.from_numpy(x_train[idx.numpy()]), gen, hflip=options.hflip)
            x = x.contiguous(memory_format=torch.channels_last)
            logits, _, _ = model(x)
            loss = masked_bce(logits, y_train_t[idx], pw)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        val_auc, per_label, val_loss, _ = _val_metrics(model, x_val, y_val, pw)
        improved = val_auc > best_auc
        if improved:
            best_auc, best_epoch, stale = val_auc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": val_loss,
            "val_macro_auroc": val_auc,
            "val_auroc": dict(zip(table.label_names, per_label, strict=True)),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.monotonic() - tick,
            "improved": improved,
        }
        history.append(record)
        write_json(out / "metrics.json", history)
        save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": gen.get_state(),
                "epoch": epoch,
                "best_auc": best_auc,
                "best_epoch": best_epoch,
                "stale": stale,
                "best_state": best_state,
                "history": history,
            },
            checkpoint_path,
        )
        log.info("epoch", epoch=epoch + 1, train_loss=record["train_loss"], val_macro_auroc=val_auc)

    model.load_state_dict(best_state)
    val_auc, per_label, _, val_probs = _val_metrics(model, x_val, y_val, pw)
    thresholds = [youden_threshold(y_val[:, j], val_probs[:, j]) for j in range(y_val.shape[1])]
    _, cams, _ = classifier_outputs(model, x_val[:1])
    meta: dict[str, Any] = {
        "format": CLASSIFIER_FORMAT,
        "labels": list(table.label_names),
        "architecture": {"name": options.config, **asdict(config)},
        "preprocess": spec.to_dict(),
        "thresholds": thresholds,
        "threshold_rule": THRESHOLD_RULE,
        "cam": {"layer": options.cam_layer, "shape": list(cams.shape[2:])},
        "pooled_features": int(model.classifier.in_features),
        "data": table.description,
        "split_counts": split["counts"],
        "metrics": {
            "val_macro_auroc": val_auc,
            "val_auroc": dict(zip(table.label_names, per_label, strict=True)),
            "best_epoch": best_epoch + 1,
            "epochs_run": len(history),
        },
        "training": {
            "seed": options.seed,
            "batch_size": options.batch_size,
            "lr": options.lr,
            "weight_decay": options.weight_decay,
            "augmentation": "rotation 7deg, scale 8%, shift 4%, contrast 15%, brightness 0.1"
            + (", horizontal flip" if options.hflip else ", no horizontal flip"),
            "pos_weight": pw.tolist(),
            "init_weights": str(options.init_weights) if options.init_weights else None,
            "seconds": time.monotonic() - started,
            "torch": torch.__version__,
        },
    }
    torch.save({k: v.contiguous() for k, v in best_state.items()}, out / "classifier.pt")
    (out / "classifier.json").write_text(json.dumps(meta, indent=2) + "\n")
    print_table(
        f"classifier (best epoch {best_epoch + 1}, validation)",
        ["label", "AUROC", "threshold"],
        [
            (name, auc, thr)
            for name, auc, thr in zip(table.label_names, per_label, thresholds, strict=True)
        ]
        + [("macro", val_auc, "")],
    )
    return meta
