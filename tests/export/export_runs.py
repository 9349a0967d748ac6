"""Tiny classifier and error-model runs written in the training loops' layout (export tests).

The classifier is the compact DenseNet at 64x64 px with random weights (batch-norm statistics
from a few random batches), trained on nothing; the OOD guard is fitted on its pooled features;
the error model keeps its random initialisation. The run files use the training modules' own
formats and writers (``CLASSIFIER_FORMAT``, ``make_split``/``write_split``,
``ERROR_MODEL_FORMAT``, ``ErrorModelConfig.to_dict``, ``fit_gaussian``), and the classifier's
dataset is a small CheXpert-style CSV of PNGs so the export's parity check reads real files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from export.parity import synthetic_inputs
from models.densenet import DenseNet, config_by_name
from models.error_loop import ERROR_MODEL_FORMAT, fit_guards, guard_outputs
from models.error_model import DirectErrorConfig, DirectErrorModel, ErrorModel, ErrorModelConfig
from models.ood import MahalanobisOOD, fit_gaussian
from models.runs import CLASSIFIER_FORMAT, make_split, write_split
from models.splits import SplitFractions
from models.training import classifier_outputs
from triage_common.bundle_format import sha256_file
from triage_common.datasets import load_dataset
from triage_common.labels import DEFAULT_LABELS
from triage_common.preprocess import PreprocessSpec

SIZE = 64
LABELS = DEFAULT_LABELS


@dataclass(frozen=True)
class Runs:
    """Paths of the runs the tests export."""

    classifier: Path
    error_model: Path
    dataset: Path


@dataclass(frozen=True)
class Bundle:
    """An exported bundle and its manifest."""

    path: Path
    manifest: dict[str, Any]
    runs: Runs


def write_csv_dataset(root: Path, patients: int = 12) -> Path:
    """A CheXpert-style CSV with one smooth 80x80 PNG frontal image per patient."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:80, 0:80] / 79.0
    header = "Path,Frontal/Lateral,AP/PA," + ",".join(LABELS)
    rows = [header]
    for i in range(patients):
        rel = f"train/patient{i:05d}/study1/view1_frontal.png"
        cy, cx, s = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        img = 0.3 + 0.4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)) + 0.2 * yy
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / rel)
        labels = ",".join(str(int(v)) for v in rng.integers(0, 2, size=len(LABELS)))
        rows.append(f"{rel},Frontal,PA,{labels}")
    csv_path = root / "train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def write_classifier_run(
    run: Path, dataset: Path, seed: int = 0, arch: str = "compact", size: int = SIZE
) -> DenseNet:
    """``classifier.pt`` + ``classifier.json`` + ``split.json`` as ``triage train classifier``."""
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = config_by_name(arch, len(LABELS), 1, "relu")
    model = DenseNet(config)
    model.train()
    with torch.no_grad():  # batch-norm running statistics from a few random batches
        for _ in range(3):
            model(torch.randn(4, 1, size, size))
    model.eval()
    spec = PreprocessSpec(size=size)
    table = load_dataset(dataset, LABELS)
    split = make_split(table, SplitFractions(), seed)
    write_split(run, split)
    _, cams, _ = classifier_outputs(model, synthetic_inputs(1, spec))
    meta: dict[str, Any] = {
        "format": CLASSIFIER_FORMAT,
        "labels": list(LABELS),
        "architecture": {"name": arch, **asdict(config)},
        "preprocess": spec.to_dict(),
        "thresholds": [0.3, 0.4, 0.5, 0.6],
        "threshold_rule": "per label, Youden's J on the validation split",
        "cam": {"layer": "relu", "shape": list(cams.shape[2:])},
        "pooled_features": int(model.classifier.in_features),
        "data": table.description,
        "split_counts": split["counts"],
        "metrics": {"val_macro_auroc": float("nan"), "best_epoch": 1, "epochs_run": 1},
        "training": {"seed": seed, "torch": torch.__version__, "note": "random init (test)"},
    }
    torch.save(model.state_dict(), run / "classifier.pt")
    (run / "classifier.json").write_text(json.dumps(meta, indent=2) + "\n")
    return model


def write_error_run(
    run: Path, classifier_run: Path, model: DenseNet, *, evaluation: bool = True
) -> None:
    """``error_model.pt``, ``ood.pt``, ``probs_only.pt``, ``error_model.json`` as the error loop;
    with ``evaluation`` also the Grad-CAM, direct and multi-layer guard files the bundle's
    evaluation graph needs (without: a run written before them)."""
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    spec = PreprocessSpec(size=SIZE)
    inputs = synthetic_inputs(48, spec, seed=3)
    _, _, pooled = classifier_outputs(model, inputs)
    mean, precision, shrinkage = fit_gaussian(pooled)
    ood = MahalanobisOOD(mean.shape[0])
    ood.set_statistics(mean, precision)
    with torch.no_grad():
        threshold = float(np.percentile(ood(torch.from_numpy(pooled)).numpy(), 99.0))
    thresholds = torch.tensor([0.3, 0.4, 0.5, 0.6])
    config = ErrorModelConfig(num_labels=len(LABELS), grid=8)
    base_config = ErrorModelConfig(num_labels=len(LABELS), grid=8, use_cams=False)
    torch.save(ErrorModel(config, thresholds).state_dict(), run / "error_model.pt")
    torch.save(ErrorModel(base_config, thresholds).state_dict(), run / "probs_only.pt")
    torch.save(ood.state_dict(), run / "ood.pt")
    group = {
        "group": "test",
        "images": 4,
        "macro_auroc": 0.5,
        "auroc": dict.fromkeys(LABELS, 0.5),
        "study_error_rate": 0.5,
        "error_detection": {"grad_cam_error_model": {"auroc": 0.5, "aupr_error": 0.5}},
        "ood_flag_rate": 0.0,
    }
    meta = {
        "format": ERROR_MODEL_FORMAT,
        "classifier_run": str(classifier_run.resolve()),
        "classifier_sha256": sha256_file(classifier_run / "classifier.pt"),
        "labels": list(LABELS),
        "thresholds": thresholds.tolist(),
        "config": config.to_dict(),
        "baseline_config": base_config.to_dict(),
        "error_definition": (
            "study wrong if any label's thresholded prediction differs from its label"
        ),
        "ood": {
            "kind": "mahalanobis",
            "features": int(mean.shape[0]),
            "shrinkage": shrinkage,
            "fitted_on": "classifier_train",
            "threshold": threshold,
            "threshold_rule": "99.0th percentile on the error-model split",
        },
        "training": {"best_epoch": 1, "val_auroc": 0.5, "seed": 0},
        "split_counts": {},
        "report": {"groups": [group], "cam_iou": {}, "external_ood": {}},
    }
    if evaluation:
        from models.error_loop import Outputs

        shutil.copyfile(run / "error_model.pt", run / "gradcam.pt")  # the served one
        direct_config = DirectErrorConfig(num_features=int(pooled.shape[1]), num_labels=len(LABELS))
        torch.save(DirectErrorModel(direct_config).state_dict(), run / "direct.pt")
        none = np.zeros((len(inputs), len(LABELS)))
        groups = guard_outputs(model, inputs)
        empty = np.zeros((len(inputs), 1, 1, 1), dtype=np.float32)
        out = Outputs(np.zeros_like(none, dtype=np.float32), empty, pooled, none, groups)
        _, multi, info = fit_guards(out, out, 99.0)
        torch.save(multi.state_dict(), run / "ood_multi.pt")
        meta["served"] = "gradcam"
        meta["gradcam_config"] = config.to_dict()
        meta["direct_config"] = direct_config.to_dict()
        meta["ood"].update(
            kind="multi-layer mahalanobis",
            threshold=info["threshold"],
            single_layer_threshold=info["single_threshold"],
            multi_layer=info,
        )
    (run / "error_model.json").write_text(json.dumps(meta, indent=2) + "\n")
