"""Latent Shift counterfactuals (Cohen et al., "Gifsplanation via Latent Shift", MIDL 2021).

For one image ``x`` and a differentiable target (an image batch -> one prediction per image,
e.g. a finding's probability): ``z = E(x)``, ``x0 = D(z)``, ``g = d target(D(z)) / dz``; the
frames are ``x_lambda = D(z + lambda g)`` for ``lambda`` from 0 down to a bound found by the
paper's search (Appendix C, as in the reference code ``captum.attr.LatentShift``): lambda steps
down from 0 by ``step - floor(lambda * step_growth)`` until a stop rule fires:

* ``no_longer_falls``: the prediction rose compared to the previous step;
* ``below_floor``: the prediction fell below ``floor``;
* ``dropped_by``: the prediction fell by more than ``drop`` from the one at lambda 0;
* ``image_changed``: ``sum |x_lambda - x0| > max_image_change * sum |x0|``;
* ``max_lambda``: ``|lambda| >= max_lambda``;
* ``zero_gradient``: ``g`` is zero everywhere (no direction to move in; nothing changes).

Where the rule is ``no_longer_falls`` or ``image_changed`` the bound is the previous step (the
last one where the prediction still fell and the image stayed within budget); the reference
code keeps the step that broke the rule. ``frames`` images are then decoded at evenly spaced
lambdas from 0 to the bound, and the attribution map is the mean absolute difference between
consecutive frames (the reference code's default ``heatmap_method="int"``, the paper's
"sliding interval").

Targets are callables in the style of pytorch-grad-cam: :class:`ClassifierProbability` wraps
a classifier and a label index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import Tensor

__all__ = [
    "ClassifierProbability",
    "Counterfactual",
    "LatentShiftSettings",
    "StopRule",
    "latent_shift",
]

Target = Callable[[Tensor], Tensor]
Coder = Callable[[Tensor], Tensor]


class StopRule(StrEnum):
    """Why the lambda search stopped."""

    NO_LONGER_FALLS = "no_longer_falls"
    BELOW_FLOOR = "below_floor"
    DROPPED_BY = "dropped_by"
    IMAGE_CHANGED = "image_changed"
    MAX_LAMBDA = "max_lambda"
    ZERO_GRADIENT = "zero_gradient"


@dataclass(frozen=True)
class LatentShiftSettings:
    """The search and sweep settings; defaults are those of the reference code."""

    step: float = field(
        default=10.0,
        metadata={"doc": "first search step in lambda (paper App. C and reference code: 10)"},
    )
    step_growth: float = field(
        default=0.1,
        metadata={
            "doc": "each step grows by floor(|lambda| * step_growth) (reference code: lambda // 10,"
            " i.e. 0.1; paper App. C: 0, a constant step)"
        },
    )
    drop: float = field(
        default=0.8,
        metadata={
            "doc": "stop once the prediction fell by more than this (reference code: 0.8; paper"
            " App. C: 0.5; the paper's text reports sequences chosen for a 30% decrease)"
        },
    )
    floor: float = field(
        default=0.05,
        metadata={"doc": "stop once the prediction is below this (reference code: 0.05)"},
    )
    max_image_change: float = field(
        default=0.05,
        metadata={
            "doc": "stop once sum|x_lambda - x0| exceeds this fraction of sum|x0| (reference code:"
            " search_max_pixel_diff_pct 0.05)"
        },
    )
    max_lambda: float = field(
        default=3000.0,
        metadata={
            "doc": "stop once |lambda| reaches this (reference code: 3000; paper App. C: 1000)"
        },
    )
    frames: int = field(
        default=10,
        metadata={"doc": "frames from lambda 0 to the bound (paper and reference code: 10)"},
    )

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"frames must be at least 2, got {self.frames}")
        if self.step <= 0 or self.step_growth < 0 or self.max_lambda <= 0:
            raise ValueError("step and max_lambda must be positive and step_growth not negative")
        if self.drop <= 0 or self.max_image_change <= 0:
            raise ValueError("drop and max_image_change must be positive")

    @classmethod
    def appendix_c(cls) -> LatentShiftSettings:
        """The values of the paper's Appendix C pseudo-code: constant step 10, drop 0.5, 1000."""
        return cls(step=10.0, step_growth=0.0, drop=0.5, max_lambda=1000.0)


@dataclass(frozen=True)
class Counterfactual:
    """One Latent Shift explanation of one image for one target."""

    frames: Tensor  # [frames, C, H, W], frames[0] = x0 = D(E(x)), frames[-1] at the bound
    lambdas: Tensor  # [frames], from 0 down to lambda_reached
    predictions: Tensor  # [frames], the target on each frame
    attribution: Tensor  # [C, H, W]: mean |frames[i+1] - frames[i]|
    lambda_reached: float
    prediction_drop: float  # predictions[0] - predictions[-1]
    stop_rule: StopRule
    search_steps: int  # lambdas tried by the search, 0 included
    image_change: float  # sum|frames[-1] - x0| / sum|x0|


class ClassifierProbability:
    """Target: ``sigmoid(logits)[:, category]`` of a classifier returning logits ``[B, L]``."""

    def __init__(self, logits: Callable[[Tensor], Tensor], category: int) -> None:
        self.logits = logits
        self.category = category

    def __call__(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(images))[:, self.category]

    def __repr__(self) -> str:
        return f"ClassifierProbability({self.category})"


def _next_lambda(lam: float, settings: LatentShiftSettings) -> float:
    return lam - settings.step - math.floor(abs(lam) * settings.step_growth)


def latent_shift(
    x: Tensor,
    encode: Coder,
    decode: Coder,
    target: Target,
    settings: LatentShiftSettings | None = None,
) -> Counterfactual:
    """The Latent Shift counterfactual of one image ``x`` ([C, H, W] or [1, C, H, W]).

    ``encode``/``decode`` map batches (e.g. ``ConvAutoencoder.encode``/``.decode``) and
    ``target`` maps an image batch to one prediction per image; the modules behind them should
    be in eval mode. The gradient is taken at ``x0 = D(E(x))``; no parameter gradients are kept.
    """
    settings = settings or LatentShiftSettings()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"latent_shift takes one image [C, H, W] or [1, C, H, W], got {x.shape}")
    with torch.no_grad():
        z = encode(x).detach()
    with torch.enable_grad():
        z_req = z.clone().requires_grad_(True)
        x0 = decode(z_req)
        pred0 = target(x0).reshape(-1)
        if pred0.numel() != 1:
            raise ValueError(f"the target gave {pred0.numel()} values for one image, not 1")
        (grad,) = torch.autograd.grad(pred0.sum(), z_req)
    x0 = x0.detach()
    initial = float(pred0.detach())
    x0_mass = float(x0.abs().sum())

    cache: dict[float, tuple[Tensor, float]] = {0.0: (x0, initial)}

    @torch.no_grad()
    def shifted(lam: float) -> tuple[Tensor, float]:
        if lam not in cache:
            image = decode(z + lam * grad)
            cache[lam] = image, float(target(image).reshape(-1)[0])
        return cache[lam]

    def change(image: Tensor) -> float:
        return float((image - x0).abs().sum()) / x0_mass if x0_mass > 0 else 0.0

    bound, steps = 0.0, 1
    if not bool(grad.any()):
        rule = StopRule.ZERO_GRADIENT
    else:
        last, lam = initial, 0.0
        while True:
            lam = _next_lambda(lam, settings)
            image, pred = shifted(lam)
            steps += 1
            if pred > last:
                rule = StopRule.NO_LONGER_FALLS
                break
            if change(image) > settings.max_image_change:
                rule = StopRule.IMAGE_CHANGED
                break
            bound = lam
            if pred < settings.floor:
                rule = StopRule.BELOW_FLOOR
                break
            if initial - pred > settings.drop:
                rule = StopRule.DROPPED_BY
                break
            if abs(lam) >= settings.max_lambda:
                rule = StopRule.MAX_LAMBDA
                break
            last = pred

    lambdas = torch.linspace(0.0, bound, settings.frames, dtype=torch.float64)
    decoded = [shifted(float(lam)) for lam in lambdas]
    frames = torch.cat([image for image, _ in decoded])
    predictions = torch.tensor([pred for _, pred in decoded], dtype=torch.float64)
    attribution = (frames[1:] - frames[:-1]).abs().mean(dim=0)
    return Counterfactual(
        frames=frames,
        lambdas=lambdas,
        predictions=predictions,
        attribution=attribution,
        lambda_reached=bound,
        prediction_drop=float(predictions[0] - predictions[-1]),
        stop_rule=rule,
        search_steps=steps,
        image_change=change(frames[-1:]),
    )
