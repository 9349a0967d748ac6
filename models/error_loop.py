"""The error-model training loop and the test-split report behind ``triage train error-model``.

Three error predictors are fitted on the same examples (the classifier's outputs on the
error-model split, clean plus augmented views, and any ``--extra-data`` set the classifier never
saw): the Grad-CAM error model (maps and probabilities), the probabilities-only network of the
same head, and the image-only direct predictor (DUP-style, on the pooled features). The one the
service runs (``served``) is ``--serve``, or with ``auto`` whichever has the highest AUROC on the
inner validation patients; the bundle's evaluation graph carries all three so
``triage evaluate`` scores them on the evaluation set itself.

Two OOD guards are fitted: the single-layer Mahalanobis distance of the pooled features (the
earlier guard) and the multi-layer guard (:class:`models.ood.MultiLayerOOD`: every dense block,
the pooled features and the image's acquisition statistics); the served score is the
multi-layer one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models.densenet import DenseNet
from models.error_model import DirectErrorConfig, DirectErrorModel, ErrorModel, ErrorModelConfig
from models.ood import IMAGE_STATISTICS, MahalanobisOOD, MultiLayerOOD, fit_gaussian
from models.runs import ClassifierRun, load_classifier_run, read_split, split_indices
from models.training import batches, classifier_outputs, masked_bce, seed_everything
from models.triage_net import guard_features
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
    extra_data: tuple[Path, ...] = ()
    serve: str = "auto"  # "auto", "gradcam" or "probs_only"


SERVE_CHOICES = ("auto", "gradcam", "probs_only", "direct")
#: Each group of the multi-layer guard is scaled by this percentile of its distances on the
#: error-model split (so each group alone flags about 0.5 % of in-distribution images).
GROUP_SCALE_PERCENTILE = 99.5


@dataclass(frozen=True)
class Outputs:
    """Classifier outputs and labels for one set of images (``guard``: the multi-layer guard's
    feature groups, when computed)."""

    probs: F32
    cams: F32
    pooled: F32
    labels: F64
    guard: tuple[F32, ...] = ()

    def subset(self, keep: npt.NDArray[np.bool_]) -> Outputs:
        """Rows ``keep``."""
        return Outputs(
            self.probs[keep],
            self.cams[keep],
            self.pooled[keep],
            self.labels[keep],
            tuple(g[keep] for g in self.guard),
        )

    def errors(self, thresholds: F64) -> F64:
        """Study error (column 0) and per-label errors (columns 1..), NaN where masked."""
        study = study_errors(self.labels, self.probs, thresholds)
        return np.concatenate(
            [study[:, None], label_errors(self.labels, self.probs, thresholds)], 1
        )


@torch.no_grad()
def guarded_outputs(
    model: DenseNet, images: F32, batch_size: int = 64
) -> tuple[F32, F32, F32, tuple[F32, ...]]:
    """(probabilities, cams, pooled, guard feature groups) for every image in one pass (eval
    mode, no augmentation)."""
    model.eval()
    probs, cams, pooled = [], [], []
    parts: list[list[F32]] = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size])
        z, _, features = guard_features(model, x.contiguous(memory_format=torch.channels_last))
        logits, cam, feat = model.head(z)
        probs.append(torch.sigmoid(logits).numpy())
        cams.append(cam.numpy())
        pooled.append(feat.numpy())
        if not parts:
            parts = [[] for _ in features]
        for group, f in zip(parts, features, strict=True):
            group.append(f.numpy())
    return (
        np.concatenate(probs),
        np.concatenate(cams),
        np.concatenate(pooled),
        tuple(np.concatenate(g) for g in parts),
    )


def guard_outputs(model: DenseNet, images: F32, batch_size: int = 64) -> tuple[F32, ...]:
    """The multi-layer guard's feature groups for every image."""
    return guarded_outputs(model, images, batch_size)[3]


def _outputs(
    run: ClassifierRun,
    images: F32,
    labels: F64,
    gen: torch.Generator | None,
    guard: bool = False,
) -> Outputs:
    if guard and gen is None and len(images):
        probs, cams, pooled, groups = guarded_outputs(run.model, images)
        return Outputs(probs, cams, pooled, labels, groups)
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
def error_scores(model: ErrorModel | DirectErrorModel, out: Outputs) -> F64:
    """P(error) columns (study, per label) for ``out``."""
    model.eval()
    if isinstance(model, DirectErrorModel):
        logits = model(torch.from_numpy(out.pooled))
    else:
        logits = model(torch.from_numpy(out.probs), torch.from_numpy(out.cams))
    scores: F64 = torch.sigmoid(logits).double().numpy()
    return scores


def fit_error_model(
    config: ErrorModelConfig | DirectErrorConfig,
    thresholds: F64,
    train: Outputs,
    val: Outputs,
    options: ErrorTrainingOptions,
    gen: torch.Generator,
    description: str,
) -> tuple[Any, dict[str, Any]]:
    """Train one error model (Grad-CAM or probabilities-only :class:`ErrorModel`, or the
    image-only :class:`DirectErrorModel`); early stopping on validation study-error AUROC."""
    model: ErrorModel | DirectErrorModel
    if isinstance(config, DirectErrorConfig):
        model = DirectErrorModel(config)
        pooled = torch.from_numpy(train.pooled)
        model.set_standardisation(pooled.mean(dim=0), pooled.std(dim=0))
    else:
        model = ErrorModel(config, torch.tensor(thresholds, dtype=torch.float32))
    y = torch.from_numpy(train.errors(thresholds)).float()
    pos = torch.nansum(y, dim=0)
    neg = (~torch.isnan(y)).sum(dim=0) - pos
    pos_weight = torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))
    val_err = val.errors(thresholds)[:, 0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=1e-3)
    probs, cams = torch.from_numpy(train.probs), torch.from_numpy(train.cams)
    pooled_all = torch.from_numpy(train.pooled)
    best_auc, best_epoch, stale = -1.0, 0, 0
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in track(range(options.epochs), options.epochs, description):
        model.train()
        for idx in batches(len(y), options.batch_size, gen):
            if isinstance(model, DirectErrorModel):
                logits = model(pooled_all[idx])
            else:
                logits = model(probs[idx], cams[idx])
            loss = masked_bce(logits, y[idx], pos_weight)
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
    flags: dict[str, npt.NDArray[np.bool_]],
    label_names: tuple[str, ...],
) -> dict[str, Any]:
    err = out.errors(thresholds)[:, 0]
    per_label, macro = classifier_aurocs(out.labels, out.probs, label_names)
    single = flags.get("single")
    return {
        "group": name,
        "images": len(err),
        "macro_auroc": macro,
        "auroc": per_label,
        "study_error_rate": study_error_rate(err),
        "error_detection": {method: error_detection(s, err) for method, s in scores.items()},
        "ood_flag_rate": float(flags["served"].mean()) if len(err) else float("nan"),
        "ood_flag_rate_single_layer": (
            float(single.mean()) if single is not None and len(err) else float("nan")
        ),
    }


def _external_ood(
    run: ClassifierRun, guards: Callable[[Outputs], dict[str, F64]], thresholds: dict[str, float]
) -> dict[str, Any]:
    """OOD scores of the real RG1 chest CR from pydicom-data, when that package is installed."""
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_UNCI.dcm")
    except Exception:  # the package is optional at train time
        return {}
    if path is None:
        return {}
    from triage_common.preprocess import preprocess_file

    x = preprocess_file(Path(str(path)), run.spec)[None]
    scores = guards(_outputs(run, x, np.full((1, len(run.labels)), np.nan), None, guard=True))
    single, served = float(scores["single"][0]), float(scores["served"][0])
    return {
        "RG1_UNCI.dcm": {
            "ood_score": served,
            "flagged": served > thresholds["served"],
            "single_layer_score": single,
            "single_layer_flagged": single > thresholds["single"],
        }
    }


def _extra_outputs(
    run: ClassifierRun, options: ErrorTrainingOptions, cache: Path | None
) -> list[Outputs]:
    """Outputs of the classifier on ``--extra-data`` sets (every image: none of them trained it)."""
    parts = []
    for path in options.extra_data:
        table = load_dataset(path, run.labels, image_root=options.image_root)
        if table.description.get("path") == str(options.data):
            raise ValueError(f"--extra-data {path} is the classifier's own dataset (--data)")
        images = preprocessed_images(table, run.spec, path / ".cache" if path.is_dir() else cache)
        parts.append(_outputs(run, images, table.labels, None))
        log.info("extra_error_data", path=str(path), images=len(table))
    return parts


def fit_guards(
    cls_out: Outputs, err_out: Outputs, percentile: float
) -> tuple[MahalanobisOOD, MultiLayerOOD, dict[str, Any]]:
    """The single-layer and multi-layer OOD guards: Gaussians on the classifier's training
    images, scales and thresholds on the error-model split."""
    mean, precision, shrinkage = fit_gaussian(cls_out.pooled)
    single = MahalanobisOOD(mean.shape[0])
    single.set_statistics(mean, precision)
    sizes = [int(g.shape[1]) for g in cls_out.guard]
    multi = MultiLayerOOD(sizes)
    shrinkages = []
    for group, feats in zip(multi.groups, cls_out.guard, strict=True):
        g_mean, g_precision, g_shrink = fit_gaussian(feats)
        assert isinstance(group, MahalanobisOOD)
        group.set_statistics(g_mean, g_precision)
        shrinkages.append(g_shrink)
    with torch.no_grad():
        parts = multi.components([torch.from_numpy(g) for g in err_out.guard]).double().numpy()
        multi.set_scales(np.percentile(parts, GROUP_SCALE_PERCENTILE, axis=0))
        combined, _ = multi([torch.from_numpy(g) for g in err_out.guard])
        single_err = single(torch.from_numpy(err_out.pooled)).double().numpy()
    names = [f"block{i + 1}" for i in range(len(sizes) - 2)] + ["pooled", "image"]
    info = {
        "single_threshold": float(np.percentile(single_err, percentile)),
        "threshold": float(np.percentile(combined.double().numpy(), percentile)),
        "shrinkage": shrinkage,
        "groups": names,
        "group_sizes": sizes,
        "group_shrinkage": shrinkages,
        "group_scales": multi.scales.tolist(),
        "image_statistics": list(IMAGE_STATISTICS),
    }
    return single, multi, info


def _choose(serve: str, validation: dict[str, float]) -> str:
    """``serve``, or for ``auto`` the predictor with the highest validation AUROC (ties: the
    first of gradcam, probs_only, direct)."""
    if serve not in SERVE_CHOICES:
        raise ValueError(f"--serve must be one of {SERVE_CHOICES}, got {serve!r}")
    if serve != "auto":
        return serve
    return max(validation, key=lambda k: (validation[k], -list(validation).index(k)))


def train_error_model(options: ErrorTrainingOptions) -> dict[str, Any]:
    """Fit the OOD guards, the three error predictors and choose the served one; write the run."""
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

    cls_table, x_cls = part("classifier_train")
    err_table, x_err = part("error_model")
    test_table, x_test = part("test")
    held_table, x_held = part("heldout")
    if len(err_table) < 10:
        raise ValueError(f"the error-model split has {len(err_table)} images; it needs at least 10")

    # Error-model split: inner train/validation by patient, clean + augmented views.
    patients = sorted(set(err_table.patient_ids))
    rng = np.random.default_rng(options.seed)
    val_patients = set(rng.choice(patients, size=max(1, len(patients) // 5), replace=False))
    is_val = np.array([p in val_patients for p in err_table.patient_ids])
    clean = _outputs(run, x_err, err_table.labels, None, guard=True)
    single, multi, guard_info = fit_guards(
        _outputs(run, x_cls, cls_table.labels, None, guard=True), clean, options.ood_percentile
    )
    guard_thresholds = {"single": guard_info["single_threshold"], "served": guard_info["threshold"]}

    def guard_scores(o: Outputs) -> dict[str, F64]:
        with torch.no_grad():
            served, _ = multi([torch.from_numpy(g) for g in o.guard])
            return {
                "single": single(torch.from_numpy(o.pooled)).double().numpy(),
                "served": served.double().numpy(),
            }

    views_train = [clean.subset(~is_val)]
    for _ in track(range(options.views), options.views, "augmented views"):
        views_train.append(_outputs(run, x_err[~is_val], err_table.labels[~is_val], gen))
    views_train += _extra_outputs(run, options, cache)
    train_out = _concat(views_train)
    val_out = clean.subset(is_val)

    n = len(run.labels)
    config = ErrorModelConfig(num_labels=n, grid=options.grid)
    model, fit_info = fit_error_model(
        config, thresholds, train_out, val_out, options, gen, "Grad-CAM error model"
    )
    base_config = ErrorModelConfig(num_labels=n, grid=options.grid, use_cams=False)
    baseline, base_info = fit_error_model(
        base_config, thresholds, train_out, val_out, options, gen, "probabilities-only network"
    )
    direct_config = DirectErrorConfig(num_features=int(train_out.pooled.shape[1]), num_labels=n)
    direct, direct_info = fit_error_model(
        direct_config, thresholds, train_out, val_out, options, gen, "image-only (DUP-style)"
    )
    served = _choose(
        options.serve,
        {
            "gradcam": fit_info["val_auroc"],
            "probs_only": base_info["val_auroc"],
            "direct": direct_info["val_auroc"],
        },
    )
    served_model: ErrorModel | DirectErrorModel = {
        "gradcam": model,
        "probs_only": baseline,
        "direct": direct,
    }[served]
    served_config: ErrorModelConfig | DirectErrorConfig = direct_config
    if served != "direct":
        served_config = config if served == "gradcam" else base_config

    # Report on the test split (in distribution) and the held-out site(s), per site.
    groups: list[dict[str, Any]] = []
    evaluated: list[tuple[str, ImageTable, F32]] = [("test", test_table, x_test)]
    if len(held_table):
        evaluated.append(("heldout", held_table, x_held))
    cam_report: dict[str, dict[str, float]] = {}
    for group, sub, x in evaluated:
        if len(sub) == 0:
            continue
        o = _outputs(run, x, sub.labels, None, guard=True)
        scores = {
            "grad_cam_error_model": error_scores(model, o)[:, 0],
            "probabilities_only": error_scores(baseline, o)[:, 0],
            "image_only_direct": error_scores(direct, o)[:, 0],
            "softmax_response": softmax_response_score(o.probs, thresholds),
            "entropy": entropy_score(o.probs),
        }
        g_scores = guard_scores(o)
        flags = {k: v > guard_thresholds[k] for k, v in g_scores.items()}
        groups.append(_group_metrics(group, o, thresholds, scores, flags, run.labels))
        for site in sorted(set(sub.sites)):
            keep = np.array([s == site for s in sub.sites])
            groups.append(
                _group_metrics(
                    f"{group}/{site}",
                    o.subset(keep),
                    thresholds,
                    {k: v[keep] for k, v in scores.items()},
                    {k: v[keep] for k, v in flags.items()},
                    run.labels,
                )
            )
        cam_report[group] = cam_iou(sub, o.cams, run.labels)

    torch.save(served_model.state_dict(), out_dir / "error_model.pt")
    torch.save(model.state_dict(), out_dir / "gradcam.pt")
    torch.save(baseline.state_dict(), out_dir / "probs_only.pt")
    torch.save(direct.state_dict(), out_dir / "direct.pt")
    torch.save(single.state_dict(), out_dir / "ood.pt")
    torch.save(multi.state_dict(), out_dir / "ood_multi.pt")
    external = _external_ood(run, guard_scores, guard_thresholds)
    meta: dict[str, Any] = {
        "format": ERROR_MODEL_FORMAT,
        "classifier_run": str(options.classifier.resolve()),
        "classifier_sha256": sha256_file(options.classifier / "classifier.pt"),
        "labels": list(run.labels),
        "thresholds": thresholds.tolist(),
        "served": served,
        "served_rule": (
            "the highest inner-validation AUROC of the Grad-CAM error model, the "
            "probabilities-only network and the image-only direct predictor"
            if options.serve == "auto"
            else f"--serve {options.serve}"
        ),
        "config": served_config.to_dict(),
        "gradcam_config": config.to_dict(),
        "baseline_config": base_config.to_dict(),
        "direct_config": direct_config.to_dict(),
        "error_definition": "wrong if any label's thresholded prediction differs from its label",
        "ood": {
            "kind": "multi-layer mahalanobis",
            "score": "max over feature groups of the Mahalanobis distance divided by the group's "
            f"{GROUP_SCALE_PERCENTILE}th percentile on the error-model split",
            "features": int(single.mean.shape[0]),
            "shrinkage": guard_info["shrinkage"],
            "shrinkage_rule": "Ledoit-Wolf intensity towards trace/C * I",
            "fitted_on": "classifier_train",
            "threshold": guard_info["threshold"],
            "threshold_rule": f"{options.ood_percentile}th percentile on the error-model split",
            "single_layer_threshold": guard_info["single_threshold"],
            "multi_layer": guard_info,
        },
        "training": {
            **fit_info,
            "views": options.views,
            "epochs": options.epochs,
            "lr": options.lr,
            "seed": options.seed,
            "extra_data": [str(p) for p in options.extra_data],
            "examples": len(train_out.probs),
            "baseline": base_info,
            "direct": direct_info,
            "seconds": time.monotonic() - started,
        },
        "split_counts": split["counts"],
        "report": {"groups": groups, "cam_iou": cam_report, "external_ood": external},
    }
    (out_dir / "error_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_json(out_dir / "report.json", meta["report"])
    _print_report(groups, cam_report, external, guard_thresholds["served"], served, meta)
    return meta


def _print_report(
    groups: list[dict[str, Any]],
    cam_report: dict[str, dict[str, float]],
    external: dict[str, Any],
    ood_threshold: float,
    served: str,
    meta: dict[str, Any],
) -> None:
    methods = [
        "grad_cam_error_model",
        "probabilities_only",
        "image_only_direct",
        "softmax_response",
        "entropy",
    ]
    training = meta["training"]
    print(
        f"served error model: {served} (validation AUROC: Grad-CAM {training['val_auroc']:.3f}, "
        f"probabilities-only {training['baseline']['val_auroc']:.3f}, image-only "
        f"{training['direct']['val_auroc']:.3f}; {training['examples']} training examples)"
    )
    print_table(
        "classifier and error detection (AUROC for predicting a study error)",
        ["group", "images", "macro AUROC", "error rate", "OOD (multi/single)", *methods],
        [
            (
                g["group"],
                g["images"],
                g["macro_auroc"],
                g["study_error_rate"],
                f"{g['ood_flag_rate']:.3f}/{g['ood_flag_rate_single_layer']:.3f}",
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
            single_layer_flagged=item["single_layer_flagged"],
        )
