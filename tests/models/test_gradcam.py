"""The in-graph CAM maps are Grad-CAM: they equal autograd Grad-CAM at both target layers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from models.densenet import DenseNet
from models.gradcam import ClassifierOutputTarget, autograd_gradcam
from tests.models.model_factory import ModelFactory

SIZE = 128


def blob_images(batch: int, size: int, dtype: torch.dtype) -> Tensor:
    """Smooth radiograph-like images: a bright field, two dark lungs and a round opacity."""
    coords = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = []
    for i in range(batch):
        cx = -0.4 + 0.8 * i / max(batch - 1, 1)
        lungs = torch.exp(-(((xx - 0.45) / 0.25) ** 2 + (yy / 0.55) ** 2)) + torch.exp(
            -(((xx + 0.45) / 0.25) ** 2 + (yy / 0.55) ** 2)
        )
        opacity = torch.exp(-((xx - cx) ** 2 + (yy + 0.2) ** 2) / 0.02)
        image = 1.0 - 0.8 * lungs + 0.9 * opacity + 0.1 * yy
        images.append((image - image.mean()) / image.std())
    return torch.stack(images)[:, None].to(dtype)


def random_images(batch: int, size: int, dtype: torch.dtype, seed: int) -> Tensor:
    """Standard-normal pixels."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, size, size, generator=gen, dtype=torch.float64).to(dtype)


def images(kind: str, batch: int, size: int, dtype: torch.dtype) -> Tensor:
    return (
        blob_images(batch, size, dtype) if kind == "blob" else random_images(batch, size, dtype, 7)
    )


def minmax(maps: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Both map sets min-max normalised per map with the reference map's range."""
    lo = reference.amin(dim=(-2, -1), keepdim=True)
    span = (reference.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-12)
    return (maps - lo) / span, (reference - lo) / span


@pytest.mark.parametrize("layer", ["relu", "norm5"])
@pytest.mark.parametrize("kind", ["random", "blob"])
@pytest.mark.parametrize("batch", [1, 4])
def test_in_graph_cam_equals_autograd_gradcam_float64(
    make_model: ModelFactory, layer: str, kind: str, batch: int
) -> None:
    """In float64 the forward pass's CAM equals autograd Grad-CAM to 1e-9, value for value."""
    model = make_model(cam_layer=layer, dtype=torch.float64)
    x = images(kind, batch, SIZE, torch.float64)
    with torch.no_grad():
        _, cams, _ = model(x)
    reference = autograd_gradcam(model, x, target_layer=layer)
    assert cams.shape == reference.shape == (batch, 4, 4, 4)
    assert float(reference.max()) > 0
    torch.testing.assert_close(cams, reference, rtol=0, atol=1e-9)


@pytest.mark.parametrize("layer", ["relu", "norm5"])
@pytest.mark.parametrize("kind", ["random", "blob"])
@pytest.mark.parametrize("batch", [1, 4])
def test_in_graph_cam_equals_autograd_gradcam_float32(
    make_model: ModelFactory, layer: str, kind: str, batch: int
) -> None:
    """In float32 the two agree to 1e-5 after per-map min-max normalisation."""
    model = make_model(cam_layer=layer, seed=3)
    x = images(kind, batch, SIZE, torch.float32)
    with torch.no_grad():
        _, cams, _ = model(x)
    reference = autograd_gradcam(model, x, target_layer=layer)
    got, want = minmax(cams, reference)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(cams, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["relu", "norm5"])
def test_densenet121_cam_equals_autograd_gradcam(make_model: ModelFactory, layer: str) -> None:
    """The full DenseNet-121 in float64 at 64x64 px gives the same maps both ways."""
    model = make_model("densenet121", num_labels=3, cam_layer=layer, dtype=torch.float64)
    x = torch.cat([blob_images(1, 64, torch.float64), random_images(1, 64, torch.float64, 2)])
    with torch.no_grad():
        _, cams, _ = model(x)
    reference = autograd_gradcam(model, x, target_layer=layer)
    assert cams.shape == (2, 3, 2, 2)
    torch.testing.assert_close(cams, reference, rtol=0, atol=1e-9)


def test_relu_cam_is_class_weighted_activation_over_area(make_model: ModelFactory) -> None:
    """At the final ReLU the map is ReLU(sum_k w_ck A_k) / (h w), Grad-CAM's exact value."""
    model = make_model(dtype=torch.float64)
    x = random_images(2, SIZE, torch.float64, 11)
    captured: dict[str, Tensor] = {}
    model.relu.register_forward_hook(lambda m, i, o: captured.update(a=o.detach().clone()))
    with torch.no_grad():
        _, cams, _ = model(x)
    a = captured["a"]
    expected = torch.relu(torch.einsum("lc,bchw->blhw", model.classifier.weight, a)) / (
        a.shape[2] * a.shape[3]
    )
    torch.testing.assert_close(cams, expected, rtol=0, atol=1e-12)


def test_norm5_and_relu_maps_differ(make_model: ModelFactory) -> None:
    """The two target layers are different maps (the norm5 one is weighted by positive shares)."""
    x = blob_images(2, SIZE, torch.float64)
    relu_model = make_model(cam_layer="relu", dtype=torch.float64)
    norm5_model = make_model(cam_layer="norm5", dtype=torch.float64)
    with torch.no_grad():
        relu_cams, norm5_cams = relu_model(x)[1], norm5_model(x)[1]
    assert not torch.allclose(relu_cams, norm5_cams, rtol=1e-5, atol=1e-8)  # torch's defaults


def test_targets_choose_and_order_the_maps(make_model: ModelFactory) -> None:
    """Explicit targets give one map per target in their order, and any scalar score works."""
    model = make_model(dtype=torch.float64)
    x = random_images(2, SIZE, torch.float64, 5)
    everything = autograd_gradcam(model, x)
    chosen = autograd_gradcam(
        model, x, targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(1)]
    )
    torch.testing.assert_close(chosen, everything[:, [3, 1]], rtol=0, atol=1e-12)

    # A contrast target: Grad-CAM of y_2 - y_0 is ReLU(sum_k (w_2k - w_0k) A_k) / (h w).
    contrast = autograd_gradcam(model, x, targets=[lambda logits: logits[:, 2] - logits[:, 0]])
    captured: dict[str, Tensor] = {}
    model.relu.register_forward_hook(lambda m, i, o: captured.update(a=o.detach().clone()))
    with torch.no_grad():
        model(x)
    w = model.classifier.weight[2] - model.classifier.weight[0]
    a = captured["a"]
    expected = torch.relu(torch.einsum("c,bchw->bhw", w, a))[:, None] / (a.shape[2] * a.shape[3])
    torch.testing.assert_close(contrast, expected, rtol=0, atol=1e-12)


def test_classifier_output_target_selects_a_logit() -> None:
    """ClassifierOutputTarget(c) picks column c of batched logits, or entry c of one row."""
    logits = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(ClassifierOutputTarget(1)(logits), torch.tensor([1.0, 4.0]))
    assert float(ClassifierOutputTarget(2)(logits[1])) == 5.0  # an entry picked, not computed


def test_autograd_gradcam_is_independent_of_in_graph_cam(
    make_model: ModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference never calls the model's forward (so it cannot reuse the in-graph maps)."""
    model = make_model()

    def refuse(x: Tensor) -> None:
        raise AssertionError("forward must not be used by the reference")

    monkeypatch.setattr(model, "forward", refuse)
    maps = autograd_gradcam(model, random_images(1, SIZE, torch.float32, 0))
    assert maps.shape == (1, 4, 4, 4)


def test_autograd_gradcam_leaves_model_untouched(make_model: ModelFactory) -> None:
    """Under no_grad and with frozen parameters it still works, leaves no hooks and no .grad."""
    model = make_model()
    for p in model.parameters():
        p.requires_grad_(False)
    x = random_images(2, SIZE, torch.float32, 4)
    with torch.no_grad():
        maps = autograd_gradcam(model, x, target_layer="norm5")
    assert maps.shape == (2, 4, 4, 4) and not maps.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not model.relu._forward_hooks
    assert not model.get_submodule("features.norm5")._forward_hooks


def test_training_mode_maps_still_match(make_model: ModelFactory) -> None:
    """In training mode (batch statistics) the in-graph CAM is still the per-image Grad-CAM."""
    model = make_model(cam_layer="norm5", dtype=torch.float64).train()
    x = random_images(3, SIZE, torch.float64, 9)
    with torch.no_grad():
        _, cams, _ = model(x)
    reference = autograd_gradcam(model, x, target_layer="norm5")
    torch.testing.assert_close(cams, reference, rtol=0, atol=1e-9)


def test_unknown_target_layer_is_refused(compact_model: DenseNet) -> None:
    """A target layer other than relu or norm5 is a ValueError."""
    with pytest.raises(ValueError, match="target_layer"):
        autograd_gradcam(compact_model, torch.zeros(1, 1, 64, 64), target_layer="conv0")


def test_full_backward_mode_gives_the_same_maps(compact_model: DenseNet) -> None:
    """The pytorch-grad-cam style full backward yields the same maps and leaves no .grad."""
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    cheap = autograd_gradcam(compact_model, x)
    full = autograd_gradcam(compact_model, x, backward="full")
    # atol as before; rtol is torch.allclose's default, which the check used
    torch.testing.assert_close(cheap, full, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in compact_model.parameters())
