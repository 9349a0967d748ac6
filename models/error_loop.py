"""The error-model training loop and the test-split report behind ``triage train error-model``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.error_model import ErrorModel, ErrorModelConfig
from models.ood import MahalanobisOOD, fit_gaussian
from models.runs import ClassifierRun, load_classifier_run, read_split, split_indices
from models.training import batches, classifier_outputs, masked_bce, seed_everything
from triage_common.bundle_format import sha256_file
from triage_common.console import print_table, track, write_json
from triage_common.datasets import ImageTable, load_dataset, preprocessed_images
from triage_common.evaluation import (
    cam_iou_matrix,
    classifier_aurocs,
    error_detection,
    mean_iou,
    study_error_rate,
)
from triage_common.logging import get_logger
from triage_common.metrics import auroc, label_errors, study_errors
from triage_common.scores import entropy_score, softmax_response_score

log = get_logger(__name__)
ERROR_MODEL_FORMAT = "cxr-triage/error-model/1"
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ErrorTrainingOptions:
    """Everything ``triage train error-model`` takes."""

    data: Path
    classifier: Path
    out: Path
    epochs: int = 150
    batch_size: int = 128
    lr: float = 3e-3
    patience: int = 25
    views: int = 4
    grid: int = 8
    ood_percentile: float = 99.0
    seed: int = 0
    image_root: Path | None = None


@dataclass(frozen=True)
class Outputs:
    """Classifier outputs and labels for one set of images."""

    probs: F32
    cams: F32
    pooled: F32
    labels: F64

    def errors(self, thresholds: F64) -> F64:
        """Study error (column 0) and per-label errors (columns 1..), NaN where masked."""
        study = study_errors(self.labels, self.probs, thresholds)
        return np.concatenate(
            [study[:, None], label_errors(self.labels, self.probs, thresholds)], 1
        )


def _outputs(run: ClassifierRun, images: F32, labels: F64, gen: torch.Generator | None) -> Outputs:
    probs, cams, pooled = classifier_outputs(run.model, images, gen=gen)
    return Outputs(probs, cams, pooled, labels)


def _concat(parts: list[Outputs]) -> Outputs:
    return Outputs(
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.cams for p in parts]),
        np.concatenate([p.pooled for p in parts]),
        np.concatenate([p.labels for p in parts]),
    )


@torch.no_grad()
def error_scores(model: ErrorModel, out: Outputs) -> F64:
    """P(error) columns (study, per label) for ``out``."""
    model.eval()
    logits = model(torch.from_numpy(out.probs), torch.from_numpy(out.cams))
    scores: F64 = torch.sigmoid(logits).double().numpy()
    return scores


def fit_error_model(
    config: ErrorModelConfig,
    thresholds: F64,
    train: Outputs,
    val: Outputs,
    options: ErrorTrainingOptions,
    gen: torch.Generator,
    description: str,
) -> tuple[ErrorModel, dict[str, Any]]:
    """Train one error model; early stopping on validation study-error AUROC."""
    model = ErrorModel(config, torch.tensor(thresholds, dtype=torch.float32))
    y = torch.from_numpy(train.errors(thresholds)).float()
    pos = torch.nansum(y, dim=0)
    neg = (~torch.isnan(y)).sum(dim=0) - pos
    pos_weight = torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))
    val_err = val.errors(thresholds)[:, 0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=1e-3)
    probs, cams = torch.from_numpy(train.probs), torch.from_numpy(train.cams)
    best_auc, best_epoch, stale = -1.0, 0, 0
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in track(range(options.epochs), options.epochs, description):
        model.train()
        for idx in batches(len(y), options.batch_size, gen):
            loss = masked_bce(model(probs[idx], cams[idx]), y[idx], pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val_auc = auroc(val_err, error_scores(model, val)[:, 0])
        if np.isnan(val_auc):
            val_auc = 0.5
        if val_auc > best_auc:
            best_auc, best_epoch, stale = val_auc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= options.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, {
        "best_epoch": best_epoch + 1,
        "val_auroc": best_auc,
        "train_examples": len(y),
        "train_error_rate": float(torch.nanmean(y[:, 0])),
        "pos_weight": pos_weight.tolist(),
    }


def cam_iou(table: ImageTable, cams: F32, label_names: tuple[str, ...]) -> dict[str, float]:
    """Mean top-p% IoU of each finding's CAM against its phantom mask (present findings only)."""
    if table.true_labels is None:
        return {}
    iou = cam_iou_matrix(
        cams, label_names, table.sop_uids, table.root / "masks", present=table.true_labels == 1
    )
    return mean_iou(iou, label_names)


def _group_metrics(
    name: str,
    out: Outputs,
    thresholds: F64,
    scores: dict[str, F64],
    ood: F64,
    ood_threshold: float,
    label_names: tuple[str, ...],
) -> dict[str, Any]:
    err = out.errors(thresholds)[:, 0]
    per_label, macro = classifier_aurocs(out.labels, out.probs, label_names)
    return {
        "group": name,
        "images": len(err),
        "macro_auroc": macro,
        "auroc": per_label,
        "study_error_rate": study_error_rate(err),
        "error_detection": {method: error_detection(s, err) for method, s in scores.items()},
        "ood_flag_rate": float((ood > ood_threshold).mean()) if len(ood) else float("nan"),
    }


def _external_ood(run: ClassifierRun, ood: MahalanobisOOD, threshold: float) -> dict[str, Any]:
    """OOD score of the real RG1 chest CR from pydicom-data, when that package is installed."""
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_UNCI.dcm")
    except Exception:  # the package is optional at train time
        return {}
    if path is None:
        return {}
    from triage_common.preprocess import preprocess_file

    x = preprocess_file(Path(str(path)), run.spec)[None]
    _, _, pooled = classifier_outputs(run.model, x)
    with torch.no_grad():
        score = float(ood(torch.from_numpy(pooled))[0])
    return {"RG1_UNCI.dcm": {"ood_score": score, "flagged": score > threshold}}


def train_error_model(options: ErrorTrainingOptions) -> dict[str, Any]:
    """Fit the OOD guard, the error model and the probabilities-only baseline; write the run."""
    started = time.monotonic()
    out_dir = options.out
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = seed_everything(options.seed)
    run = load_classifier_run(options.classifier)
    split = read_split(options.classifier)
    table = load_dataset(options.data, run.labels, image_root=options.image_root)
    thresholds = run.thresholds
    cache = options.data / ".cache" if options.data.is_dir() else None

    def part(name: str) -> tuple[ImageTable, F32]:
        idx = split_indices(table, split, name)
        sub = table.subset(idx)
        if len(sub) == 0:
            return sub, np.empty((0, 1, run.spec.size, run.spec.size), dtype=np.float32)
        return sub, preprocessed_images(sub, run.spec, cache)

    _, x_cls = part("classifier_train")
    err_table, x_err = part("error_model")
    test_table, x_test = part("test")
    held_table, x_held = part("heldout")
    if len(err_table) < 10:
        raise ValueError(f"the error-model split has {len(err_table)} images; it needs at least 10")

    # OOD guard: statistics on the classifier's training images.
    cls_out = classifier_outputs(run.model, x_cls)
    mean, precision, shrinkage = fit_gaussian(cls_out[2])
    ood = MahalanobisOOD(mean.shape[0])
    ood.set_statistics(mean, precision)

    def ood_scores(pooled: F32) -> F64:
        with torch.no_grad():
            scores: F64 = ood(torch.from_numpy(pooled)).double().numpy()
        return scores

    # Error-model split: inner train/validation by patient, clean + augmented views.
    patients = sorted(set(err_table.patient_ids))
    rng = np.random.default_rng(options.seed)
    val_patients = set(rng.choice(patients, size=max(1, len(patients) // 5), replace=False))
    is_val = np.array([p in val_patients for p in err_table.patient_ids])
    clean = _outputs(run, x_err, err_table.labels, None)
    ood_threshold = float(np.percentile(ood_scores(clean.pooled), options.ood_percentile))
    views_train = [_outputs(run, x_err[~is_val], err_table.labels[~is_val], None)]
    for _ in track(range(options.views), options.views, "augmented views"):
        views_train.append(_outputs(run, x_err[~is_val], err_table.labels[~is_val], gen))
    train_out = _concat(views_train)
    val_out = _outputs(run, x_err[is_val], err_table.labels[is_val], None)

    n = len(run.labels)
    config = ErrorModelConfig(num_labels=n, grid=options.grid)
    model, fit_info = fit_error_model(
        config, thresholds, train_out, val_out, options, gen, "error model"
    )
    base_config = ErrorModelConfig(num_labels=n, grid=options.grid, use_cams=False)
    baseline, base_info = fit_error_model(
        base_config, thresholds, train_out, val_out, options, gen, "probabilities-only baseline"
    )

    # Report on the test split (in distribution) and the held-out site(s), per site.
    groups: list[dict[str, Any]] = []
    evaluated: list[tuple[str, ImageTable, F32]] = [("test", test_table, x_test)]
    if len(held_table):
        evaluated.append(("heldout", held_table, x_held))
    cam_report: dict[str, dict[str, float]] = {}
    for group, sub, x in evaluated:
        if len(sub) == 0:
            continue
        o = _outputs(run, x, sub.labels, None)
        scores = {
            "grad_cam_error_model": error_scores(model, o)[:, 0],
            "probabilities_only": error_scores(baseline, o)[:, 0],
            "softmax_response": softmax_response_score(o.probs, thresholds),
            "entropy": entropy_score(o.probs),
        }
        ood_s = ood_scores(o.pooled)
        groups.append(
            _group_metrics(group, o, thresholds, scores, ood_s, ood_threshold, run.labels)
        )
        for site in sorted(set(sub.sites)):
            keep = np.array([s == site for s in sub.sites])
            site_out = Outputs(o.probs[keep], o.cams[keep], o.pooled[keep], o.labels[keep])
            site_scores = {k: v[keep] for k, v in scores.items()}
            groups.append(
                _group_metrics(
                    f"{group}/{site}",
                    site_out,
                    thresholds,
                    site_scores,
                    ood_s[keep],
                    ood_threshold,
                    run.labels,
                )
            )
        cam_report[group] = cam_iou(sub, o.cams, run.labels)

    torch.save(model.state_dict(), out_dir / "error_model.pt")
    torch.save(baseline.state_dict(), out_dir / "probs_only.pt")
    torch.save(ood.state_dict(), out_dir / "ood.pt")
    external = _external_ood(run, ood, ood_threshold)
    meta: dict[str, Any] = {
        "format": ERROR_MODEL_FORMAT,
        "classifier_run": str(options.classifier.resolve()),
        "classifier_sha256": sha256_file(options.classifier / "classifier.pt"),
        "labels": list(run.labels),
        "thresholds": thresholds.tolist(),
        "config": config.to_dict(),
        "baseline_config": base_config.to_dict(),
        "error_definition": "wrong if any label's thresholded prediction differs from its label",
        "ood": {
            "kind": "mahalanobis",
            "features": int(mean.shape[0]),
            "shrinkage": shrinkage,
            "shrinkage_rule": "Ledoit-Wolf intensity towards trace/C * I",
            "fitted_on": "classifier_train",
            "threshold": ood_threshold,
            "threshold_rule": f"{options.ood_percentile}th percentile on the error-model split",
        },
        "training": {
            **fit_info,
            "views": options.views,
            "epochs": options.epochs,
            "lr": options.lr,
            "seed": options.seed,
            "baseline": base_info,
            "seconds": time.monotonic() - started,
        },
        "split_counts": split["counts"],
        "report": {"groups": groups, "cam_iou": cam_report, "external_ood": external},
    }
    (out_dir / "error_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_json(out_dir / "report.json", meta["report"])
    _print_report(groups, cam_report, external, ood_threshold)
    return meta


def _print_report(
    groups: list[dict[str, Any]],
    cam_report: dict[str, dict[str, float]],
    external: dict[str, Any],
    ood_threshold: float,
) -> None:
    methods = ["grad_cam_error_model", "probabilities_only", "softmax_response", "entropy"]
    print_table(
        "classifier and error detection (AUROC for predicting a study error)",
        ["group", "images", "macro AUROC", "error rate", "OOD flagged", *methods],
        [
            (
                g["group"],
                g["images"],
                g["macro_auroc"],
                g["study_error_rate"],
                g["ood_flag_rate"],
                *(g["error_detection"][m]["auroc"] for m in methods),
            )
            for g in groups
        ],
    )
    labels = sorted({k for v in cam_report.values() for k in v})
    if labels:
        print_table(
            "CAM localisation: mean IoU of top-p% CAM pixels with the mask",
            ["group", *labels],
            [(g, *(v.get(n, float("nan")) for n in labels)) for g, v in cam_report.items()],
        )
    for name, item in external.items():
        log.info(
            "external_ood",
            file=name,
            score=item["ood_score"],
            threshold=ood_threshold,
            flagged=item["flagged"],
        )
