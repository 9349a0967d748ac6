"""Reference Grad-CAM by autograd, in the style of pytorch-grad-cam.

Forward hooks capture the activation at the target layer (the final ReLU output, or the
``features.norm5`` output) and the tensor that flows on from it; one backward pass per target
gives the gradient of that target's score with respect to the activation; the channel weights
are the gradient averaged over positions and the map is ``ReLU(sum_k alpha_k * A_k)``.

This does not use the model's in-graph CAM (it calls :meth:`DenseNet.logits`, which skips it):
it is the independent reference the tests compare the analytic maps with, and the eager
baseline for benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.densenet import CAM_LAYERS, DenseNet

__all__ = ["ClassifierOutputTarget", "autograd_gradcam", "target_module"]


class ClassifierOutputTarget:
    """Selects one class logit: ``[B, L]`` logits -> ``[B]`` scores (``[L]`` -> scalar)."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output: Tensor) -> Tensor:
        if model_output.ndim == 1:
            return model_output[self.category]
        return model_output[:, self.category]

    def __repr__(self) -> str:
        return f"ClassifierOutputTarget({self.category})"


def target_module(model: DenseNet, target_layer: str) -> nn.Module:
    """The module whose output is the Grad-CAM activation for ``target_layer``."""
    if target_layer == "relu":
        return model.relu
    if target_layer == "norm5":
        return model.get_submodule("features.norm5")
    raise ValueError(f"target_layer must be one of {CAM_LAYERS}, got {target_layer!r}")


class _ActivationsAndGradients:
    """Forward hook that keeps a cloned, detached activation and the live output for gradients."""

    def __init__(self, module: nn.Module) -> None:
        self.activation: Tensor | None = None
        self.output: Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        # Clone: a later in-place op must not change what we computed the map from.
        self.activation = output.detach().clone()
        self.output = output

    def release(self) -> None:
        self._handle.remove()


def autograd_gradcam(
    model: DenseNet,
    x: Tensor,
    targets: Sequence[Callable[[Tensor], Tensor]] | None = None,
    target_layer: str = "relu",
    backward: Literal["activation", "full"] = "activation",
) -> Tensor:
    """Grad-CAM maps ``[B, T, h, w]`` by autograd, one backward pass per target.

    ``backward="activation"`` differentiates only down to the target layer (the cheapest exact
    reference). ``backward="full"`` does what common Grad-CAM tools (pytorch-grad-cam) do:
    ``score.backward()`` through the whole network, parameter gradients included, reading the
    activation's gradient from a tensor hook; the benchmark's eager baseline uses it. Both give
    the same maps; parameter ``.grad`` is cleared afterwards either way.

    ``targets`` map the logits ``[B, L]`` to one score per image ``[B]`` (default: every label,
    ``ClassifierOutputTarget(0..L-1)``). The score is summed over the batch before each
    backward pass; images do not interact after ``norm5`` (even in training mode), so each
    image's map is its own Grad-CAM. Parameter gradients are left untouched.
    """
    module = target_module(model, target_layer)
    if targets is None:
        targets = [ClassifierOutputTarget(c) for c in range(model.config.num_labels)]
    if len(targets) == 0:
        raise ValueError("autograd_gradcam needs at least one target")
    recorder = _ActivationsAndGradients(module)
    try:
        with torch.enable_grad():
            # An input that requires grad keeps a graph even if the parameters are frozen.
            logits = model.logits(x.detach().requires_grad_(True))
            activation, output = recorder.activation, recorder.output
            if activation is None or output is None:
                raise RuntimeError(f"the hook on {target_layer!r} did not fire")
            maps = []
            grads: list[Tensor] = []
            if backward == "full":
                output.register_hook(grads.append)
            for i, target in enumerate(targets):
                score = target(logits)
                retain = i < len(targets) - 1
                if backward == "full":
                    score.sum().backward(retain_graph=retain)
                    grad = grads.pop()
                else:
                    (grad,) = torch.autograd.grad(score.sum(), output, retain_graph=retain)
                alpha = grad.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
                maps.append(torch.relu((alpha * activation).sum(dim=1)))
    finally:
        recorder.release()
        if backward == "full":
            model.zero_grad(set_to_none=True)
    return torch.stack(maps, dim=1).detach()
