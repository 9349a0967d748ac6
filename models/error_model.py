"""The Grad-CAM error model: P(the classifier is wrong on a study) from CAMs and probabilities.

Inputs are the classifier's per-label CAM maps, resized in the graph to a fixed grid, and its
probabilities. Features: each map's shape (divided by its peak), its log peak and its spread
(mean / peak), and per label the probability, its signed margin from the operating threshold and
its binary entropy. Output: logits of shape (B, 1 + L), column 0 the study-level error
(any label wrong), columns 1.. a cheap per-label error.

With ``use_cams=False`` the same network sees only the probability features: the
"probabilities-only" baseline of the same head size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-6


@dataclass(frozen=True)
class ErrorModelConfig:
    """Shape of the error model (stored in the run and the bundle manifest)."""

    num_labels: int
    grid: int = 8
    channels: int = 16
    hidden: int = 32
    use_cams: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return asdict(self)


class ErrorModel(nn.Module):
    """Small CNN over CAM maps + MLP over probability features -> error logits (B, 1 + L)."""

    thresholds: Tensor

    def __init__(self, config: ErrorModelConfig, thresholds: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        n = config.num_labels
        self.register_buffer(
            "thresholds", torch.full((n,), 0.5) if thresholds is None else thresholds.float()
        )
        in_features = 3 * n
        self.cam_net: nn.Module | None = None
        if config.use_cams:
            c = config.channels
            self.cam_net = nn.Sequential(
                nn.Conv2d(n, c, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c, 2 * c, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            in_features += 2 * c + 2 * n
        self.head = nn.Sequential(
            nn.Linear(in_features, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 1 + n),
        )

    def prob_features(self, probs: Tensor) -> Tensor:
        """Probability, signed margin from the threshold, and binary entropy per label."""
        p = probs.clamp(_EPS, 1.0 - _EPS)
        entropy = -(p * torch.log(p) + (1.0 - p) * torch.log(1.0 - p))
        return torch.cat([p, p - self.thresholds, entropy], dim=1)

    def forward(self, probs: Tensor, cams: Tensor) -> Tensor:
        features = [self.prob_features(probs)]
        if self.cam_net is not None:
            g = self.config.grid
            grid = F.interpolate(cams, size=(g, g), mode="bilinear", align_corners=False)
            peak = grid.amax(dim=(2, 3))
            shape = grid / (peak[:, :, None, None] + _EPS)
            spread = grid.mean(dim=(2, 3)) / (peak + _EPS)
            features += [self.cam_net(shape), torch.log(peak + _EPS), spread]
        out: Tensor = self.head(torch.cat(features, dim=1))
        return out


@dataclass(frozen=True)
class DirectErrorConfig:
    """The image-only error predictor (DUP-style): an MLP on the classifier's pooled features."""

    num_features: int
    num_labels: int
    hidden: int = 32

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return asdict(self)


class DirectErrorModel(nn.Module):
    """P(error) straight from the image's representation, without the classifier's outputs.

    Raghu et al. ("Direct uncertainty prediction for medical second opinions", 2019) train a
    network on the image to predict disagreement directly; here it reads the classifier's
    global-average-pooled features (what the image looks like to the classifier), standardised
    by the training split's mean and spread, and returns logits (B, 1 + L) like
    :class:`ErrorModel`.
    """

    mean: Tensor
    scale: Tensor

    def __init__(self, config: DirectErrorConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.num_features))
        self.register_buffer("scale", torch.ones(config.num_features))
        self.head = nn.Sequential(
            nn.Linear(config.num_features, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 1 + config.num_labels),
        )

    def set_standardisation(self, mean: Tensor, scale: Tensor) -> None:
        """The features' mean and standard deviation on the training examples."""
        self.mean.copy_(mean)
        self.scale.copy_(scale.clamp(min=1e-6))

    def forward(self, pooled: Tensor) -> Tensor:
        out: Tensor = self.head((pooled - self.mean) / self.scale)
        return out
