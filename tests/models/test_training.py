"""End-to-end training on a tiny phantom dataset: classifier run, resume, error-model run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.error_loop import ErrorTrainingOptions
from models.error_loop import train_error_model as train_error
from models.runs import load_classifier_run, read_split
from triage_common.scores import entropy_score, softmax_response_score
from triage_tools.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(name="tiny_phantoms", scope="module")
def fixture_tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120-study confounded phantom dataset at 64 px."""
    out = tmp_path_factory.mktemp("phantoms")
    assert main(["synth", str(out), "--studies", "120", "--seed", "3", "--size", "64"]) == 0
    return out


@pytest.fixture(name="classifier_run", scope="module")
def fixture_classifier_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact classifier trained for two epochs at 64 px."""
    run = tmp_path_factory.mktemp("cls")
    args = ["train", "classifier", "--data", str(tiny_phantoms), "--out", str(run)]
    args += ["--config", "compact", "--size", "64", "--epochs", "2", "--batch-size", "16"]
    assert main(args) == 0
    return run


def test_classifier_run_records_what_serving_needs(classifier_run: Path) -> None:
    """classifier.json carries labels, preprocessing, thresholds, CAM shape and the split."""
    meta = json.loads((classifier_run / "classifier.json").read_text())
    assert meta["labels"] == ["Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax"]
    assert meta["preprocess"]["size"] == 64
    assert len(meta["thresholds"]) == 4 and all(0 <= t <= 1 for t in meta["thresholds"])
    assert meta["cam"] == {"layer": "relu", "shape": [2, 2]}
    history = json.loads((classifier_run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    split = read_split(classifier_run)
    parts_per_patient: dict[str, str] = split["patients"]
    assert set(parts_per_patient.values()) <= {
        "classifier_train",
        "classifier_val",
        "error_model",
        "test",
        "heldout",
    }


def test_saved_weights_are_a_plain_torchvision_state_dict(classifier_run: Path) -> None:
    """classifier.pt is a plain state dict with torchvision names that loads back."""
    state = torch.load(classifier_run / "classifier.pt", map_location="cpu", weights_only=True)
    assert "features.conv0.weight" in state and "classifier.weight" in state
    run = load_classifier_run(classifier_run)
    x = torch.zeros(1, 1, 64, 64)
    logits, cams, _ = run.model(x)
    assert logits.shape == (1, 4) and cams.shape == (1, 4, 2, 2)


def test_resume_continues_from_the_checkpoint(tiny_phantoms: Path, tmp_path: Path) -> None:
    """--resume after an interrupted run continues at the next epoch instead of restarting."""
    base = ["train", "classifier", "--data", str(tiny_phantoms), "--out", str(tmp_path)]
    base += ["--config", "compact", "--size", "64", "--batch-size", "16"]
    assert main([*base, "--epochs", "1"]) == 0
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_error_model_run_and_report(
    tiny_phantoms: Path, classifier_run: Path, tmp_path: Path
) -> None:
    """The error-model run writes the three predictors, both OOD guards and a per-site report
    with every baseline; ``auto`` serves the best-validating predictor, and extra data the
    classifier never saw adds training examples."""
    assert main(["synth", str(tiny_phantoms.parent / "extra"), "--studies", "20", "--seed", "9",
                 "--size", "64", "--lateral-fraction", "0"]) == 0  # fmt: skip
    meta = train_error(
        ErrorTrainingOptions(
            data=tiny_phantoms, classifier=classifier_run, out=tmp_path, epochs=5, views=1
        )
    )
    for name in (
        "error_model.pt",
        "gradcam.pt",
        "probs_only.pt",
        "direct.pt",
        "ood.pt",
        "ood_multi.pt",
        "error_model.json",
        "report.json",
    ):
        assert (tmp_path / name).exists(), name
    assert meta["ood"]["threshold"] > 0 and meta["ood"]["single_layer_threshold"] > 0
    assert meta["ood"]["multi_layer"]["groups"] == ["block1", "block2", "block3", "pooled", "image"]
    validation = {
        "gradcam": meta["training"]["val_auroc"],
        "probs_only": meta["training"]["baseline"]["val_auroc"],
        "direct": meta["training"]["direct"]["val_auroc"],
    }
    assert validation[meta["served"]] == max(validation.values())
    groups = {g["group"]: g for g in meta["report"]["groups"]}
    assert "test" in groups
    methods = set(groups["test"]["error_detection"])
    assert methods == {
        "grad_cam_error_model",
        "probabilities_only",
        "image_only_direct",
        "softmax_response",
        "entropy",
    }
    more = train_error(
        ErrorTrainingOptions(
            data=tiny_phantoms,
            classifier=classifier_run,
            out=tmp_path / "more",
            epochs=2,
            views=1,
            extra_data=(tiny_phantoms.parent / "extra",),
            serve="probs_only",
        )
    )
    assert more["served"] == "probs_only"
    assert more["training"]["examples"] == meta["training"]["examples"] + 20
    if "heldout" in groups:
        assert any(name.startswith("heldout/") for name in groups)


def test_baseline_scores_rank_uncertain_studies_higher() -> None:
    """Softmax response and entropy give a study near its thresholds a higher error score."""
    probs = np.array([[0.95, 0.02], [0.55, 0.48]], dtype=np.float32)
    thresholds = np.array([0.5, 0.5])
    assert (
        softmax_response_score(probs, thresholds)[1] > softmax_response_score(probs, thresholds)[0]
    )
    assert entropy_score(probs)[1] > entropy_score(probs)[0]


def test_error_levers_bench_compares_variants_on_a_fresh_set(
    tiny_phantoms: Path, classifier_run: Path, tmp_path: Path
) -> None:
    """`triage bench error-levers` fits every variant on the same examples and reports each
    one's AUROC on a fresh set, with paired intervals against P and against permuted maps."""
    fresh = tmp_path / "fresh"
    assert main(["synth", str(fresh), "--studies", "40", "--seed", "21", "--size", "64"]) == 0
    out = tmp_path / "levers.json"
    argv = ["bench", "error-levers", "--data", str(tiny_phantoms), "--classifier"]
    argv += [str(classifier_run), "--evaluation", str(fresh), "--out", str(out), "--views", "1"]
    argv += ["--seeds", "1", "--permutations", "1", "--resamples", "20"]
    assert main([*argv, "--variants", "P", "G", "R", "DUP"]) == 0
    result = json.loads(out.read_text())
    assert list(result["variants"]) == ["P", "G", "R", "DUP"]
    assert "minus_P" in result["variants"]["G"] and "minus_permuted" in result["variants"]["R"]
    assert "minus_permuted" not in result["variants"]["DUP"]  # no maps to permute
    assert result["evaluation_studies"] == 40
    assert main([*argv, "--variants", "X"]) == 2
