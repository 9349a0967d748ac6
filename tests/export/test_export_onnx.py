"""``triage export onnx``: the graph interface, parity with PyTorch, and the refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.bundle import OnnxExportOptions, ParityFailure, export_bundle
from export.parity import Tolerances, check_parity, parity_inputs, synthetic_inputs
from export.sources import SourceError, load_sources
from models.gradcam import autograd_gradcam
from tests.export.export_runs import LABELS, SIZE, Bundle, Runs, write_classifier_run
from triage_common.bundle_format import INPUT, MODEL_FILE, OUTPUTS, read_manifest
from triage_common.onnx_runtime import OnnxRuntimeModel
from triage_common.preprocess import PreprocessSpec
from triage_tools.cli import main


def test_graph_has_named_outputs_and_dynamic_batch(bundle: Bundle) -> None:
    """One ONNX graph, opset 17+, input image [batch,1,S,S] float32 and the five named outputs."""
    model = onnx.load(str(bundle.path / MODEL_FILE))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (image,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == INPUT and dims == ["batch", 1, SIZE, SIZE]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert tuple(o.name for o in model.graph.output) == OUTPUTS
    for out in model.graph.output:
        assert out.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_recorded_parity_is_within_tolerance(bundle: Bundle) -> None:
    """The manifest records deviations at batch 1 and a larger batch, all within 1e-4."""
    parity = bundle.manifest["parity"]
    assert parity["passed"] is True
    assert parity["source"].startswith("dataset:")  # the run's CSV dataset is still there
    assert 1 in parity["batch_sizes"] and max(parity["batch_sizes"]) > 1
    assert parity["providers"] == ["CPUExecutionProvider"]
    assert set(parity["max_deviation"]) == {
        "probabilities",
        "p_error",
        "p_error_labels",
        "cams",
        "ood_score",
    }
    assert all(0 <= v <= 1e-4 for v in parity["max_deviation"].values())


def test_parity_holds_on_fresh_inputs_and_batch_sizes(bundle: Bundle, runs: Runs) -> None:
    """ONNX Runtime matches PyTorch on new synthetic inputs at batch sizes 1, 2 and 5."""
    src = load_sources(runs.classifier, runs.error_model)
    images = synthetic_inputs(5, PreprocessSpec(size=SIZE), seed=11)
    report = check_parity(src.net, bundle.path / MODEL_FILE, images, batch_sizes=[1, 2, 5])
    assert report.ok, report.failures
    assert report.max_deviation["probabilities"] <= 1e-4
    assert report.max_deviation["ood_score"] <= 1e-4


def test_onnx_cams_equal_autograd_gradcam(bundle: Bundle, runs: Runs) -> None:
    """The CAM output served by ONNX Runtime equals autograd Grad-CAM at the final ReLU."""
    src = load_sources(runs.classifier, runs.error_model)
    images = synthetic_inputs(3, PreprocessSpec(size=SIZE), seed=5)
    cams = OnnxRuntimeModel(bundle.path / MODEL_FILE, allow_spinning=False).run(images)["cams"]
    reference = autograd_gradcam(src.classifier.model, torch.from_numpy(images)).numpy()
    assert cams.shape == reference.shape == (3, len(LABELS), *bundle.manifest["cam"]["shape"])
    np.testing.assert_allclose(cams, reference, atol=1e-5 * max(1.0, float(reference.max())))


def test_parity_inputs_fall_back_to_synthetic_images(tmp_path: Path) -> None:
    """Without the dataset folder, the parity inputs are deterministic synthetic images."""
    spec = PreprocessSpec(size=SIZE)
    data = {"kind": "phantom", "path": str(tmp_path / "gone")}
    first, source = parity_inputs(data, LABELS, spec, 4, 1)
    second, _ = parity_inputs(data, LABELS, spec, 4, 1)
    assert source.startswith("synthetic") and first.shape == (4, 1, SIZE, SIZE)
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.float32 and float(first[0].std()) > 0


def test_failed_parity_writes_nothing_and_keeps_old_bundle(bundle: Bundle, tmp_path: Path) -> None:
    """A bundle that fails parity is refused, naming the output; the previous bundle survives."""
    out = tmp_path / "bundle"
    shutil.copytree(bundle.path, out)
    impossible = Tolerances(probabilities=-1.0)
    options = OnnxExportOptions(
        bundle.runs.classifier, bundle.runs.error_model, out, parity_images=2, tolerances=impossible
    )
    with pytest.raises(ParityFailure, match=r"refusing to write bundle .*bundle.*probabilities"):
        export_bundle(options)
    assert read_manifest(out)["bundle_id"] == bundle.manifest["bundle_id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging left behind


def test_error_model_of_another_classifier_is_refused(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error-model run made for another classifier.pt (sha256 differs) is refused, exit 2."""
    other = tmp_path / "other-classifier"
    write_classifier_run(other, runs.dataset, seed=5)
    out = tmp_path / "bundle"
    argv = ["export", "onnx", "--classifier", str(other), "--error-model", str(runs.error_model)]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "trained on a different classifier" in err and "sha256" in err
    assert not out.exists()
    with pytest.raises(SourceError, match="different classifier"):
        load_sources(other, runs.error_model)


def test_out_folder_that_is_not_a_bundle_is_left_alone(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --out folder holding other files is refused before any export work (exit 1)."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", "onnx", "--classifier", str(runs.classifier)]
    assert main([*argv, "--error-model", str(runs.error_model), "--out", str(out)]) == 1
    assert "is not a model bundle" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_evaluation_graphs_match_pytorch_and_the_served_graph(bundle: Bundle, runs: Runs) -> None:
    """evaluation.onnx gives every baseline and both guards as PyTorch does; its Grad-CAM error
    model equals the served P(error) (the run serves it) and error_head.onnx gives the same
    from (probabilities, cams)."""
    section = bundle.manifest["evaluation"]
    assert all(v <= 1e-4 for v in section["parity"]["max_deviation"].values())
    images = synthetic_inputs(3, PreprocessSpec(size=SIZE), seed=5)
    served = OnnxRuntimeModel(bundle.path / MODEL_FILE).run(images)
    evaluation = OnnxRuntimeModel(bundle.path / section["file"]).run(images)
    assert set(evaluation) == set(section["outputs"])
    np.testing.assert_allclose(evaluation["p_error_gradcam"], served["p_error"], atol=1e-5)
    np.testing.assert_allclose(evaluation["ood_multi"], served["ood_score"], rtol=1e-4)
    assert evaluation["ood_components"].shape == (3, 5)
    head = OnnxRuntimeModel(bundle.path / section["error_head"]["file"]).session
    (p_error,) = head.run(None, {"probabilities": served["probabilities"], "cams": served["cams"]})
    np.testing.assert_allclose(p_error, served["p_error"], atol=1e-5)


def test_a_run_without_the_evaluation_files_exports_the_served_graph_only(
    runs: Runs, tmp_path: Path
) -> None:
    """An error-model run written before the evaluation graph (no gradcam.pt, direct.pt,
    ood_multi.pt) still exports: the served graph with the single-layer guard, no
    evaluation section."""
    from models.runs import load_classifier_run
    from tests.export.export_runs import write_error_run

    old = tmp_path / "old-error"
    model = load_classifier_run(runs.classifier).model
    write_error_run(old, runs.classifier, model, evaluation=False)
    out = tmp_path / "bundle"
    argv = ["export", "onnx", "--classifier", str(runs.classifier), "--error-model", str(old)]
    assert main([*argv, "--out", str(out), "--parity-images", "2"]) == 0
    manifest = read_manifest(out)
    assert "evaluation" not in manifest and manifest["ood"]["kind"] == "mahalanobis"
    assert sorted(manifest["files"]) == [MODEL_FILE]
