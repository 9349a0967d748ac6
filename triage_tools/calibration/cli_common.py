"""Shared by `triage calibrate` and `triage evaluate`: bundle, serving rules, data, summaries."""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Bundle, load_bundle
from service.config import ServiceConfig, load_config
from triage_common.datasets import load_dataset
from triage_tools.calibration.calibrate import CalibrationSet
from triage_tools.calibration.served import ServedOptions, ServedRun, run_served

DATA_HELP = (
    "labelled set the networks never saw: a phantom folder (labels.csv, e.g. a fresh "
    "`triage synth OUT --seed N` with a seed other than the training set's) or a "
    "CheXpert/MIMIC-style CSV; truth is the reported labels, frontal images only"
)


def add_served_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the served run: the serving configuration, batching, image root."""
    parser.add_argument(
        "--config",
        type=Path,
        help="the `triage serve` TOML file: its decode.*, eligibility.* and inference.providers "
        "are applied exactly as the server applies them (default: the server's defaults)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="ONNX Runtime batch (16)")
    parser.add_argument(
        "--image-root", type=Path, help="folder the CSV's paths are relative to (the CSV's)"
    )


def serving_config(bundle: Path, config_file: Path | None) -> ServiceConfig:
    """The serve configuration (file + environment) for ``bundle``; raises ``ConfigError``."""
    return load_config(config_file, overrides={"bundle": str(bundle)})


def open_bundle(path: Path) -> Bundle:
    """Load and verify the bundle (sha256 of every file)."""
    return load_bundle(path)


def run_labelled(
    bundle: Bundle,
    args: argparse.Namespace,
    *,
    keep_cams: bool = False,
    evaluation: bool = False,
) -> ServedRun:
    """Read ``args.data`` and run the bundle over it through the served path (with
    ``evaluation``, also the bundle's evaluation graph on the same images)."""
    config = serving_config(args.bundle, args.config)
    # The bundle's labels in its order; truth is the reported labels, uncertain ones unknown.
    data = load_dataset(args.data, bundle.labels, uncertain="ignore", image_root=args.image_root)
    if len(data) == 0:
        raise ValueError(f"{args.data} holds no frontal image")
    warn_if_training_data(bundle, data.description)
    options = ServedOptions(
        decode=config.decode,
        eligibility=config.eligibility,
        inference=config.inference,
        batch_size=max(1, int(args.batch_size)),
        keep_cams=keep_cams,
        evaluation=evaluation,
    )
    run = run_served(bundle, data, options)
    if run.skipped:
        print(
            f"skipped {len(run.skipped)} of {len(data)} images the service would refuse: "
            + "; ".join(f"{r} ({n})" for r, n in run.skipped_reasons().items()),
            file=sys.stderr,
        )
    if len(run.cal) == 0:
        raise ValueError("the service would refuse every image of the set")
    return run


def warn_if_training_data(bundle: Bundle, description: dict[str, Any]) -> None:
    """Say so when the set is the very dataset the bundle's networks were trained on."""
    trained = bundle.manifest.get("provenance", {}).get("dataset", {}) or {}
    same_path = False
    if trained.get("path") and description.get("path"):
        same_path = Path(str(trained["path"])).resolve() == Path(str(description["path"])).resolve()
    same_phantoms = (
        description.get("kind") == "phantom"
        and trained.get("kind") == "phantom"
        and trained.get("seed") is not None
        and trained.get("seed") == description.get("seed")
        and trained.get("scenario") == description.get("scenario")
    )
    if same_path or same_phantoms:
        print(
            "warning: this is the dataset the bundle was trained on "
            f"({trained.get('path')}, seed {trained.get('seed')}); figures on it are optimistic. "
            "Use a set the networks never saw (e.g. `triage synth OUT --seed N`, another N).",
            file=sys.stderr,
        )


def drop_unscored(cal: CalibrationSet) -> tuple[CalibrationSet, int]:
    """Rows whose raw P(error) is not finite are removed (the service defers them anyway)."""
    finite = np.isfinite(cal.p_error_raw)
    if finite.all():
        return cal, 0
    return cal.subset(finite), int((~finite).sum())


def data_summary(cal: CalibrationSet, ood_threshold: float, **extra: Any) -> dict[str, Any]:
    """What the set was: size, sites, patients, error rate, prevalence, OOD flags."""
    wrong = cal.wrong
    prevalence = {
        label: float(np.nanmean(cal.truth[:, j])) if np.isfinite(cal.truth[:, j]).any() else None
        for j, label in enumerate(cal.labels)
    }
    return {
        "source": cal.source,
        "studies": len(cal),
        "patients": len(set(cal.patient_ids)) if cal.patient_ids else None,
        "sites": dict(sorted(Counter(cal.sites).items())),
        "study_error_rate": float(wrong.mean()),
        "label_prevalence": prevalence,
        "ood_flagged": int((~(cal.ood_score <= ood_threshold)).sum()),
        **extra,
    }


def jsonable(value: Any) -> Any:
    """Plain JSON: NaN and infinities become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
