"""Rebuild the served :class:`TriageNet` from a classifier run and an error-model run.

The error-model run records the sha256 of the ``classifier.pt`` it was trained on; exporting it
with any other classifier would pair an error model with maps it never saw, so that is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.error_loop import ERROR_MODEL_FORMAT
from models.error_model import DirectErrorConfig, DirectErrorModel, ErrorModel, ErrorModelConfig
from models.ood import MahalanobisOOD, MultiLayerOOD
from models.runs import ClassifierRun, load_classifier_run
from models.triage_net import ErrorHeadNet, EvaluationNet, TriageNet
from triage_common.bundle_format import sha256_file

ERROR_RUN_FILES = ("error_model.json", "error_model.pt", "ood.pt")
#: Written by runs since the evaluation graph: every baseline and the multi-layer guard.
EVALUATION_RUN_FILES = ("gradcam.pt", "probs_only.pt", "direct.pt", "ood_multi.pt")


class SourceError(ValueError):
    """The runs cannot be exported together (missing files, mismatched classifier or labels)."""


@dataclass(frozen=True)
class ExportSources:
    """The two runs behind a bundle and the network rebuilt from them."""

    classifier_dir: Path
    error_dir: Path
    classifier: ClassifierRun
    error_meta: dict[str, Any]
    classifier_sha256: str
    net: TriageNet
    evaluation: EvaluationNet | None = None  # runs older than the evaluation graph: None
    error_head: ErrorHeadNet | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    @property
    def size(self) -> int:
        return self.classifier.spec.size

    @property
    def in_channels(self) -> int:
        return int(self.classifier.model.config.in_channels)


def load_error_meta(error_dir: Path) -> dict[str, Any]:
    """``error_model.json`` of an error-model run, after checking the run's files are there."""
    for name in ERROR_RUN_FILES:
        if not (error_dir / name).is_file():
            raise SourceError(
                f"{error_dir / name} is missing: is {error_dir} a `triage train error-model` run?"
            )
    meta: dict[str, Any] = json.loads((error_dir / "error_model.json").read_text())
    if meta.get("format") != ERROR_MODEL_FORMAT:
        raise SourceError(
            f"{error_dir / 'error_model.json'}: unknown format {meta.get('format')!r}"
        )
    return meta


def load_sources(classifier_dir: Path, error_dir: Path) -> ExportSources:
    """Load both runs, check they belong together, and assemble the network in eval mode."""
    error_meta = load_error_meta(error_dir)
    try:
        classifier = load_classifier_run(classifier_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise SourceError(str(exc)) from exc
    digest = sha256_file(classifier_dir / "classifier.pt")
    recorded = error_meta.get("classifier_sha256")
    if digest != recorded:
        raise SourceError(
            f"the error model in {error_dir} was trained on a different classifier: "
            f"{classifier_dir / 'classifier.pt'} has sha256 {digest[:16]}..., "
            f"error_model.json records {str(recorded)[:16]}... "
            f"(trained from {error_meta.get('classifier_run')}); "
            "export the classifier run it was trained on, or retrain the error model"
        )
    if list(error_meta.get("labels", [])) != list(classifier.labels):
        raise SourceError(
            f"label mismatch: {classifier_dir} has {list(classifier.labels)}, "
            f"{error_dir} has {error_meta.get('labels')}"
        )
    thresholds = torch.tensor(classifier.thresholds, dtype=torch.float32)

    def weights(name: str) -> dict[str, torch.Tensor]:
        loaded: dict[str, torch.Tensor] = torch.load(
            error_dir / name, map_location="cpu", weights_only=True
        )
        return loaded

    def error_model(config: dict[str, object], name: str) -> ErrorModel:
        model = ErrorModel(ErrorModelConfig(**config), thresholds)  # type: ignore[arg-type]
        model.load_state_dict(weights(name))
        return model.eval()

    served: ErrorModel | DirectErrorModel
    if error_meta.get("served") == "direct":
        served = DirectErrorModel(DirectErrorConfig(**error_meta["config"]))
        served.load_state_dict(weights("error_model.pt"))
        served.eval()
    else:
        served = error_model(error_meta["config"], "error_model.pt")
    ood = MahalanobisOOD(int(error_meta["ood"]["features"]))
    ood.load_state_dict(weights("ood.pt"))
    if not all((error_dir / name).is_file() for name in EVALUATION_RUN_FILES):
        net = TriageNet(classifier.model, ood, served).eval()
        return ExportSources(classifier_dir, error_dir, classifier, error_meta, digest, net)
    multi = MultiLayerOOD([int(n) for n in error_meta["ood"]["multi_layer"]["group_sizes"]])
    multi.load_state_dict(weights("ood_multi.pt"))
    gradcam = error_model(error_meta["gradcam_config"], "gradcam.pt")
    probs_only = error_model(error_meta["baseline_config"], "probs_only.pt")
    direct = DirectErrorModel(DirectErrorConfig(**error_meta["direct_config"]))
    direct.load_state_dict(weights("direct.pt"))
    net = TriageNet(classifier.model, ood, served, multi).eval()
    evaluation = EvaluationNet(classifier.model, ood, multi, gradcam, probs_only, direct).eval()
    return ExportSources(
        classifier_dir,
        error_dir,
        classifier,
        error_meta,
        digest,
        net,
        evaluation,
        ErrorHeadNet(gradcam).eval(),
    )
