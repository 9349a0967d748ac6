"""Weight import: torchvision, old-style and CheXNet checkpoints, RGB folding and head rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from models.densenet import DenseNet, config_by_name
from models.weights import WeightsError, load_weights, normalise_state_dict
from tests.models.model_factory import ModelFactory

SIZE = 96


def old_style(key: str) -> str:
    """torchvision's old dense-layer name (``norm1`` -> ``norm.1``), the inverse of its regex."""
    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)


def legacy_state(model: DenseNet) -> dict[str, Tensor]:
    """The model's weights as an old checkpoint: dotted names and no num_batches_tracked."""
    return {
        old_style(k): v.clone()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def outputs(model: DenseNet, x: Tensor) -> tuple[Tensor, ...]:
    with torch.no_grad():
        return tuple(model.eval()(x))


def assert_same_outputs(a: DenseNet, b: DenseNet, x: Tensor) -> None:
    for got, want in zip(outputs(a, x), outputs(b, x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.fixture(name="source_model")
def fixture_source_model(make_model: ModelFactory) -> DenseNet:
    """A trained-looking compact source model (1 channel, 4 labels, settled BatchNorm)."""
    return make_model(seed=21)


@pytest.fixture(name="fresh_model")
def fixture_fresh_model() -> DenseNet:
    """A freshly initialised compact model with the same shape as the source."""
    torch.manual_seed(99)
    return DenseNet(config_by_name("compact", num_labels=4)).eval()


@pytest.fixture(name="image")
def fixture_image() -> Tensor:
    """Two random single-channel images."""
    return torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def test_torchvision_state_dict_file_loads(
    source_model: DenseNet, fresh_model: DenseNet, image: Tensor, tmp_path: Path
) -> None:
    """A torchvision-layout .pth file loads and the model then gives the source's outputs."""
    path = tmp_path / "densenet.pth"
    torch.save(source_model.state_dict(), path)
    report = load_weights(fresh_model, path)
    assert report.source_format == "torchvision"
    assert report.prefix_stripped == "" and report.legacy_renamed == 0
    assert set(report.loaded) == set(source_model.state_dict())
    assert report.reinitialised == () and not report.folded_rgb
    assert report.source_labels == report.model_labels == 4
    assert_same_outputs(fresh_model, source_model, image)


def test_old_style_names_load(
    source_model: DenseNet, fresh_model: DenseNet, image: Tensor, tmp_path: Path
) -> None:
    """Old torchvision names (norm.1, conv.2, ...) without num_batches_tracked are renamed."""
    state = legacy_state(source_model)
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    path = tmp_path / "old.pt"
    torch.save(state, path)
    report = load_weights(fresh_model, path)
    assert report.source_format == "torchvision-legacy"
    assert report.legacy_renamed == sum(".denselayer" in k for k in state)
    assert_same_outputs(fresh_model, source_model, image)


def test_chexnet_checkpoint_loads(
    source_model: DenseNet, fresh_model: DenseNet, image: Tensor, tmp_path: Path
) -> None:
    """A CheXNet-style checkpoint (module.densenet121., classifier.0, old names) loads."""
    state = {}
    for key, value in legacy_state(source_model).items():
        key = key.replace("classifier.", "classifier.0.")
        state[f"module.densenet121.{key}"] = value
    assert "module.densenet121.features.denseblock2.denselayer3.conv.2.weight" in state
    assert "module.densenet121.classifier.0.bias" in state
    optimizer = torch.optim.Adam(source_model.parameters())
    checkpoint = {
        "epoch": 7,
        "best_loss": 0.12,
        "state_dict": state,
        "optimizer": optimizer.state_dict(),
    }
    path = tmp_path / "m-25012018-123527.pth.tar"
    torch.save(checkpoint, path)
    report = load_weights(fresh_model, path)
    assert report.source_format == "chexnet"
    assert report.prefix_stripped == "module.densenet121."
    assert "classifier.weight" in report.loaded
    assert_same_outputs(fresh_model, source_model, image)


def test_module_prefixed_state_dict_loads(
    source_model: DenseNet, fresh_model: DenseNet, image: Tensor
) -> None:
    """A DataParallel (module.) state dict given as a mapping loads the same."""
    state = {f"module.{k}": v for k, v in source_model.state_dict().items()}
    report = load_weights(fresh_model, state)
    assert report.source_format == "torchvision" and report.prefix_stripped == "module."
    assert_same_outputs(fresh_model, source_model, image)


def test_chexnet_densenet121_folds_into_grayscale_model(make_model: ModelFactory) -> None:
    """A 3-channel, 14-label CheXNet DenseNet-121 loads into a 1-channel model with fold_rgb."""
    rgb = make_model("densenet121", num_labels=14, in_channels=3, seed=5)
    state = {
        f"module.densenet121.{old_style(k)}".replace("classifier.", "classifier.0."): v
        for k, v in rgb.state_dict().items()
    }
    gray = DenseNet(config_by_name("densenet121", num_labels=14, in_channels=1))
    report = load_weights(gray, {"state_dict": state}, fold_rgb=True)
    assert report.source_format == "chexnet" and report.folded_rgb
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    for got, want in zip(outputs(gray, x), outputs(rgb, x.expand(-1, 3, -1, -1)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_rgb_conv0_is_folded_on_request(make_model: ModelFactory, fresh_model: DenseNet) -> None:
    """Folded to one channel, a grayscale image gives what the RGB model gives for it replicated."""
    rgb = make_model(in_channels=3, seed=8, dtype=torch.float64)
    gray = fresh_model.to(torch.float64)
    report = load_weights(gray, rgb.state_dict(), fold_rgb=True)
    assert report.folded_rgb
    folded = gray.get_parameter("features.conv0.weight")
    assert folded.shape == (24, 1, 7, 7)
    torch.testing.assert_close(
        folded, rgb.get_parameter("features.conv0.weight").sum(dim=1, keepdim=True)
    )
    x = torch.rand(3, 1, SIZE, SIZE, dtype=torch.float64)
    for got, want in zip(outputs(gray, x), outputs(rgb, x.repeat(1, 3, 1, 1)), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_rgb_conv0_without_fold_is_an_error(
    make_model: ModelFactory, fresh_model: DenseNet
) -> None:
    """Loading 3-channel weights into a 1-channel model without fold_rgb says to pass it."""
    rgb = make_model(in_channels=3, seed=8)
    with pytest.raises(ValueError, match=r"3 input channels.*fold_rgb=True"):
        load_weights(fresh_model, rgb.state_dict())


def test_grayscale_weights_cannot_load_into_rgb_model(source_model: DenseNet) -> None:
    """A 1-channel conv0 cannot be loaded into a 3-channel model (nothing to fold)."""
    rgb = DenseNet(config_by_name("compact", num_labels=4, in_channels=3))
    with pytest.raises(ValueError, match="1 input channels but the model takes 3"):
        load_weights(rgb, source_model.state_dict(), fold_rgb=True)


def test_label_count_mismatch_is_refused_by_default(
    make_model: ModelFactory, fresh_model: DenseNet
) -> None:
    """A 14-label source into a 4-label model is refused, naming both label counts."""
    source = make_model(num_labels=14, seed=2)
    before = {k: v.clone() for k, v in fresh_model.state_dict().items()}
    with pytest.raises(ValueError, match=r"source head has 14 labels, the model has 4 labels"):
        load_weights(fresh_model, source.state_dict())
    for key, value in fresh_model.state_dict().items():
        assert torch.equal(value, before[key]), key  # nothing was half-loaded


def test_label_count_mismatch_reinitialises_head_on_request(
    make_model: ModelFactory, fresh_model: DenseNet, image: Tensor
) -> None:
    """With head='reinit' the backbone loads and the classifier is re-initialised for 4 labels."""
    source = make_model(num_labels=14, seed=2)
    report = load_weights(fresh_model, source.state_dict(), head="reinit")
    assert report.reinitialised == ("classifier.weight", "classifier.bias")
    assert report.source_labels == 14 and report.model_labels == 4
    assert "classifier re-initialised (14 -> 4 labels)" in str(report)
    assert not any(k.startswith("classifier.") for k in report.loaded)
    assert fresh_model.classifier.weight.shape == (4, fresh_model.num_features)
    assert torch.all(fresh_model.classifier.bias == 0)
    assert not torch.allclose(  # torch's default tolerances
        fresh_model.classifier.weight, source.classifier.weight[:4], rtol=1e-5, atol=1e-8
    )
    torch.testing.assert_close(
        outputs(fresh_model, image)[2], outputs(source, image)[2], rtol=0, atol=0
    )


def test_source_without_head_needs_reinit(source_model: DenseNet, fresh_model: DenseNet) -> None:
    """A backbone-only state dict is refused by default and loads with head='reinit'."""
    state = {k: v for k, v in source_model.state_dict().items() if not k.startswith("classifier")}
    with pytest.raises(ValueError, match="no classifier"):
        load_weights(fresh_model, state)
    report = load_weights(fresh_model, state, head="reinit")
    assert report.source_labels is None and len(report.reinitialised) == 2


def test_missing_backbone_keys_are_named(source_model: DenseNet, fresh_model: DenseNet) -> None:
    """Missing backbone tensors are an error that names them."""
    state = dict(source_model.state_dict())
    del state["features.denseblock3.denselayer2.conv1.weight"]
    del state["features.norm5.running_var"]
    with pytest.raises(ValueError, match=r"2 missing backbone keys: .*denselayer2\.conv1\.weight"):
        load_weights(fresh_model, state)


def test_unexpected_keys_are_named(source_model: DenseNet, fresh_model: DenseNet) -> None:
    """Keys the model does not have (e.g. a deeper block) are an error that names them."""
    state = dict(source_model.state_dict())
    state["features.denseblock1.denselayer9.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 unexpected keys: .*denselayer9"):
        load_weights(fresh_model, state)


def test_other_architecture_is_refused(fresh_model: DenseNet) -> None:
    """A DenseNet-121 state dict does not load into the compact model."""
    big = DenseNet(config_by_name("densenet121", num_labels=4))
    with pytest.raises(ValueError, match="does not match the model architecture"):
        load_weights(fresh_model, big.state_dict())


def test_shape_mismatch_is_named(source_model: DenseNet, fresh_model: DenseNet) -> None:
    """A tensor of the wrong shape is an error naming the key and both shapes."""
    state = dict(source_model.state_dict())
    state["features.norm0.weight"] = torch.ones(7)
    with pytest.raises(ValueError, match=r"features\.norm0\.weight: source \(7,\), model \(24,\)"):
        load_weights(fresh_model, state)


def test_files_that_are_not_state_dicts_are_refused(fresh_model: DenseNet, tmp_path: Path) -> None:
    """A file holding something other than a DenseNet state dict gives a clear ValueError."""
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ValueError, match="not a state dict"):
        load_weights(fresh_model, listing)
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a DenseNet state dict"):
        load_weights(fresh_model, other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights-only torch checkpoint"):
        load_weights(fresh_model, garbage)


def test_pickled_objects_are_not_executed(fresh_model: DenseNet, tmp_path: Path) -> None:
    """Files are read with weights_only=True, so arbitrary pickled objects are refused."""
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": Path("/")}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_weights(fresh_model, path)


def test_normalise_state_dict_renames_without_a_model(source_model: DenseNet) -> None:
    """normalise_state_dict turns a CheXNet-style mapping into torchvision's current names."""
    state = {f"module.densenet121.{k}": v for k, v in legacy_state(source_model).items()}
    names = set(normalise_state_dict({"state_dict": state}))
    expected = {k for k in source_model.state_dict() if not k.endswith("num_batches_tracked")}
    assert names == expected


def test_refusals_name_the_keyword_and_the_cli_flag(
    make_model: ModelFactory, fresh_model: DenseNet
) -> None:
    """A refusal an option would lift names the keyword, and for the CLI the flag instead."""
    with pytest.raises(WeightsError) as mismatch:
        load_weights(fresh_model, make_model(num_labels=14, seed=2).state_dict())
    assert "head='reinit'" in str(mismatch.value)
    assert "pass --reinit-head to keep the backbone" in mismatch.value.for_cli()
    assert "head=" not in mismatch.value.for_cli()
    with pytest.raises(WeightsError) as rgb:
        load_weights(fresh_model, make_model(in_channels=3, seed=8).state_dict())
    assert rgb.value.for_cli().endswith(
        "pass --fold-rgb to sum the RGB filters into one grayscale filter"
    )


@pytest.mark.slow
def test_train_classifier_refuses_in_one_line_naming_the_flag(
    make_model: ModelFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`triage train classifier --init-weights` with a 14-label file exits 2 with one line that
    names --reinit-head; a missing file exits 2 naming it. No traceback either time."""
    from tests.export.export_runs import write_csv_dataset
    from triage_tools.cli import main

    weights = tmp_path / "chexnet14.pt"
    torch.save(make_model(num_labels=14, seed=2).state_dict(), weights)
    data = write_csv_dataset(tmp_path / "data")
    argv = ["train", "classifier", "--data", str(data), "--config", "compact", "--size", "64"]
    argv += ["--epochs", "1", "--out", str(tmp_path / "run")]
    assert main([*argv, "--init-weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "head='reinit'" not in err
    assert err.strip().splitlines()[-1] == (  # after the data preparation's progress bar
        f"triage train classifier: --init-weights {weights}: label-count mismatch: the source "
        "head has 14 labels, the model has 4 labels; pass --reinit-head to keep the backbone "
        "and re-initialise the classifier"
    )
    assert main([*argv, "--init-weights", str(tmp_path / "missing.pt")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("missing.pt: file does not exist") and "--init-weights" in line
