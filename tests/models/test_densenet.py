"""DenseNet architecture: torchvision's names and sizes, the in-graph outputs and ONNX export."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from models.densenet import (
    COMPACT,
    DENSENET121,
    DenseNet,
    DenseNetConfig,
    config_by_name,
    num_parameters,
)
from tests.models.model_factory import ModelFactory

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_densenet_keys(
    growth_rate: int, block_config: tuple[int, ...], num_init_features: int
) -> set[str]:
    """The state-dict keys of torchvision's DenseNet, written out from its naming scheme."""
    del growth_rate, num_init_features  # names do not depend on widths
    keys = {"features.conv0.weight", "classifier.weight", "classifier.bias"}
    keys |= {f"features.norm0.{k}" for k in BN_KEYS}
    keys |= {f"features.norm5.{k}" for k in BN_KEYS}
    for b, layers in enumerate(block_config, start=1):
        for n in range(1, layers + 1):
            prefix = f"features.denseblock{b}.denselayer{n}"
            keys |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
            keys |= {f"{prefix}.norm1.{k}" for k in BN_KEYS}
            keys |= {f"{prefix}.norm2.{k}" for k in BN_KEYS}
        if b < len(block_config):
            keys.add(f"features.transition{b}.conv.weight")
            keys |= {f"features.transition{b}.norm.{k}" for k in BN_KEYS}
    return keys


def test_densenet121_has_torchvision_state_dict_keys() -> None:
    """The full configuration has exactly torchvision's DenseNet-121 state-dict keys."""
    state = DenseNet(DENSENET121).state_dict()
    expected = torchvision_densenet_keys(32, (6, 12, 24, 16), 64)
    assert set(state) == expected
    assert len(state) == len(expected) == 727
    assert state["features.conv0.weight"].shape == (64, 3, 7, 7)
    assert state["features.norm5.running_var"].shape == (1024,)
    assert state["classifier.weight"].shape == (1000, 1024)


def test_densenet121_parameter_count() -> None:
    """DenseNet-121 with 3 channels and 1000 labels has 7,978,856 parameters, like torchvision's."""
    assert num_parameters(DenseNet(DENSENET121)) == 7_978_856


def test_parameter_count_follows_channels_and_labels() -> None:
    """With 1 input channel and 4 labels only conv0 and the linear head shrink."""
    model = DenseNet(config_by_name("densenet121", num_labels=4, in_channels=1))
    conv0_saved = 64 * (3 - 1) * 7 * 7
    head_saved = (1000 - 4) * (1024 + 1)
    assert num_parameters(model) == 7_978_856 - conv0_saved - head_saved == 6_951_684


def test_compact_is_a_real_densenet() -> None:
    """The compact configuration keeps DenseNet's structure: 4 dense blocks and 3 transitions."""
    model = DenseNet(config_by_name("compact", num_labels=4))
    names = {n for n, _ in model.features.named_children()}
    assert {f"denseblock{i}" for i in range(1, 5)} <= names
    assert {f"transition{i}" for i in range(1, 4)} <= names
    assert "transition4" not in names
    assert set(model.state_dict()) == torchvision_densenet_keys(
        COMPACT.growth_rate, COMPACT.block_config, COMPACT.num_init_features
    )
    assert num_parameters(model) < num_parameters(DenseNet(DENSENET121)) / 10


def test_config_by_name_sets_head_input_and_cam_layer() -> None:
    """config_by_name gives the named architecture with the requested labels, channels, layer."""
    cfg = config_by_name("densenet121", num_labels=14, in_channels=1, cam_layer="norm5")
    assert (cfg.growth_rate, cfg.block_config, cfg.num_init_features, cfg.bn_size) == (
        32,
        (6, 12, 24, 16),
        64,
        4,
    )
    assert (cfg.num_labels, cfg.in_channels, cfg.cam_layer) == (14, 1, "norm5")
    assert config_by_name("compact", 3) == dataclasses.replace(COMPACT, num_labels=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet50", "num_labels": 4}, "unknown DenseNet configuration 'resnet50'"),
        ({"name": "compact", "num_labels": 4, "cam_layer": "conv0"}, "cam_layer"),
        ({"name": "compact", "num_labels": 4, "in_channels": 2}, "in_channels must be 1 or 3"),
        ({"name": "compact", "num_labels": 0}, "num_labels"),
    ],
)
def test_config_by_name_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    """An unknown name, CAM layer, channel count or label count is a ValueError saying which."""
    with pytest.raises(ValueError, match=message):
        config_by_name(**kwargs)  # type: ignore[arg-type]


def test_initialisation_matches_torchvision() -> None:
    """Convolutions are Kaiming-normal, BatchNorm starts at weight 1 / bias 0, head bias at 0."""
    torch.manual_seed(0)
    model = DenseNet(config_by_name("densenet121", num_labels=4))
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    assert torch.all(model.classifier.bias == 0)
    # denseblock3.denselayer5.conv2: 128 -> 32 channels, 3x3, fan-in 1152.
    weight = model.get_parameter("features.denseblock3.denselayer5.conv2.weight")
    fan_in = weight.shape[1] * 9
    assert float(weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)


def test_forward_returns_logits_cams_and_pooled_features(compact_model: DenseNet) -> None:
    """forward gives [B,L] logits, [B,L,h,w] CAMs and [B,C] pooled final activations that agree."""
    x = torch.randn(3, 1, 128, 96)
    captured: dict[str, Tensor] = {}
    compact_model.relu.register_forward_hook(lambda m, i, o: captured.update(a=o.detach()))
    with torch.no_grad():
        logits, cams, pooled = compact_model(x)
    h, w = COMPACT.cam_shape(128, 96)
    assert (h, w) == (4, 3)
    assert logits.shape == (3, 4)
    assert cams.shape == (3, 4, h, w)
    assert pooled.shape == (3, compact_model.num_features)
    # torch.allclose's default tolerances, which these checks used before
    torch.testing.assert_close(pooled, captured["a"].mean(dim=(2, 3)), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(logits, compact_model.classifier(pooled), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(compact_model.logits(x), logits, rtol=1e-5, atol=1e-8)
    assert torch.all(cams >= 0)


def test_final_relu_does_not_overwrite_norm5_output(compact_model: DenseNet) -> None:
    """A hook on norm5 that keeps the tensor without cloning still sees its negative values."""
    kept: list[Tensor] = []
    compact_model.get_submodule("features.norm5").register_forward_hook(
        lambda m, i, o: kept.append(o)
    )
    with torch.no_grad():
        compact_model(torch.randn(2, 1, 64, 64))
    assert float(kept[0].min()) < 0


def test_dropout_only_in_training() -> None:
    """With drop_rate > 0 outputs are deterministic in eval mode and stochastic in training."""
    cfg = dataclasses.replace(config_by_name("compact", 2), drop_rate=0.5)
    model = DenseNet(cfg).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], model(x)[0])
        model.train()
        assert not torch.equal(model(x)[2], model(x)[2])


def test_config_rejects_bad_values() -> None:
    """Impossible hyper-parameters are refused when the configuration is built."""
    with pytest.raises(ValueError, match="block_config"):
        DenseNetConfig(12, (), 24)
    with pytest.raises(ValueError, match="drop_rate"):
        DenseNetConfig(12, (2, 2), 24, drop_rate=1.0)


@pytest.mark.parametrize("cam_layer", ["relu", "norm5"])
def test_onnx_export_round_trip(make_model: ModelFactory, tmp_path: Path, cam_layer: str) -> None:
    """The model exports to ONNX (opset 17, dynamic batch); ONNX Runtime reproduces its outputs."""
    ort = pytest.importorskip("onnxruntime")
    model = make_model(cam_layer=cam_layer)
    path = tmp_path / "classifier.onnx"
    names = ["logits", "cams", "pooled"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            model,
            (torch.randn(1, 1, 96, 96),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in ["image", *names]},
        )
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, 1, 96, 96, generator=gen)
        with torch.no_grad():
            expected = model(x)
        got = session.run(None, {"image": x.numpy()})
        for name, want, have in zip(names, expected, got, strict=True):
            assert have.shape == tuple(want.shape), name
            np.testing.assert_allclose(have, want.numpy(), rtol=0, atol=1e-4, err_msg=name)
        assert float(np.abs(got[1]).max()) > 0  # the maps are not trivially zero


def test_without_the_last_pool_maps_are_twice_as_fine_and_still_grad_cam() -> None:
    """``last_pool=False`` keeps torchvision's keys (the pool has no parameters), gives 8x8 maps
    at 128 px instead of 4x4, and the in-graph CAM still equals autograd Grad-CAM."""
    from models.gradcam import autograd_gradcam
    from tests.models.model_factory import settle_batchnorm

    torch.manual_seed(3)
    pooled = DenseNet(config_by_name("compact", 4))
    torch.manual_seed(3)
    fine = DenseNet(config_by_name("compact", 4, last_pool=False))
    assert set(fine.state_dict()) == set(pooled.state_dict())
    assert fine.config.cam_shape(128, 128) == (8, 8) and fine.config.downsampling == 16
    assert pooled.config.cam_shape(128, 128) == (4, 4)
    fine = settle_batchnorm(fine.double(), 3)
    x = torch.randn(2, 1, 128, 128, dtype=torch.float64)
    _, cams, _ = fine(x)
    assert cams.shape == (2, 4, 8, 8)
    reference = autograd_gradcam(fine, x)
    torch.testing.assert_close(cams, reference, rtol=1e-9, atol=1e-12)


def test_taps_are_the_dense_block_outputs() -> None:
    """``features_with_taps`` returns the same norm5 output as ``features`` and one tap per
    dense block, each with that block's channels."""
    torch.manual_seed(0)
    model = DenseNet(config_by_name("compact", 2)).eval()
    x = torch.randn(2, 1, 64, 64)
    z, taps = model.features_with_taps(x)
    torch.testing.assert_close(z, model.features(x), rtol=0, atol=0)
    assert len(taps) == len(model.config.block_config)
    assert taps[-1].shape[1] == model.num_features
