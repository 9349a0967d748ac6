"""Out-of-distribution guard: Mahalanobis distance of pooled classifier features, in the graph.

The mean and a shrunk precision matrix are fitted on the classifier's training split; the
threshold is set on the error-model split (a high percentile), and the service defers any study
past it whatever P(error) says. The covariance is shrunk towards ``trace/C * I`` with the
Ledoit-Wolf (2004) intensity estimated from the data: little shrinkage when there are many more
images than features (compact model), more when features outnumber images (DenseNet-121's
1,024 features on a small training split).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

#: Smallest shrinkage used, so the precision stays finite even for degenerate features.
MIN_SHRINKAGE = 1e-3


def ledoit_wolf_shrinkage(
    centred: npt.NDArray[np.float64], gram: npt.NDArray[np.float64] | None = None
) -> float:
    """Ledoit-Wolf optimal shrinkage intensity towards ``trace/C * I`` for centred rows.

    ``gram`` is ``centred.T @ centred`` when the caller has it already (C x C: the dear part).
    """
    n, c = centred.shape
    sample = (centred.T @ centred if gram is None else gram) / n
    mu = np.trace(sample) / c
    delta2 = float(np.sum((sample - mu * np.eye(c)) ** 2)) / c
    if delta2 <= 0.0:
        return 1.0
    sq_norms = np.sum(centred**2, axis=1)
    beta2 = float(np.sum(sq_norms**2) - n * np.sum(sample**2)) / (n * n * c)
    return float(np.clip(beta2 / delta2, 0.0, 1.0))


def fit_gaussian(
    features: npt.NDArray[np.floating], shrinkage: float | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """Mean, precision and the shrinkage used for ``features`` (N, C).

    ``shrinkage=None`` estimates the Ledoit-Wolf intensity; a number fixes it.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (N>=2, C) feature matrix, got shape {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    gram = centred.T @ centred
    if shrinkage is None:
        shrinkage = ledoit_wolf_shrinkage(centred, gram)
    shrinkage = max(float(shrinkage), MIN_SHRINKAGE)
    c = x.shape[1]
    cov = gram / (x.shape[0] - 1)
    target = np.trace(cov) / c * np.eye(c)
    shrunk = (1.0 - shrinkage) * cov + shrinkage * target
    precision = np.linalg.inv(shrunk)
    return mean, (precision + precision.T) / 2.0, shrinkage


class MahalanobisOOD(nn.Module):
    """score(f) = (f - mean)^T P (f - mean), per row."""

    mean: Tensor
    precision: Tensor

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("precision", torch.eye(num_features))

    def set_statistics(
        self, mean: npt.NDArray[np.float64], precision: npt.NDArray[np.float64]
    ) -> None:
        """Load fitted statistics (kept as float32 buffers)."""
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.precision.copy_(torch.as_tensor(precision, dtype=torch.float32))

    def forward(self, pooled: Tensor) -> Tensor:
        centred = pooled - self.mean
        return ((centred @ self.precision) * centred).sum(dim=1)


#: The feature groups of the multi-layer guard, in the order of its ``components`` output:
#: the global average of each dense block's output, the classifier's pooled features (the
#: single-layer guard's input) and statistics of the preprocessed image itself.
IMAGE_STATISTICS = (
    "mean",
    "std",
    "skewness",
    "kurtosis",
    "edge_x",
    "edge_y",
    "noise",
    "border_minus_centre",
    "bright_share",
    "dark_share",
)


def image_statistics(image: Tensor) -> Tensor:
    """(B, 10) acquisition statistics of a preprocessed batch (B, 1, S, S): intensity moments,
    mean absolute gradients (sharpness), the high-pass residual's spread (quantum noise), the
    border's brightness against the centre (collimation), and the shares of pixels beyond two
    standard deviations (saturation). Plain tensor ops: they export to ONNX."""
    x = image[:, :1]
    b = x.shape[0]
    flat = x.reshape(b, -1)
    mean = flat.mean(dim=1, keepdim=True)
    centred = flat - mean
    var = (centred**2).mean(dim=1, keepdim=True)
    std = torch.sqrt(var + 1e-12)
    z = centred / std
    skew = (z**3).mean(dim=1, keepdim=True)
    kurt = (z**4).mean(dim=1, keepdim=True)
    edge_x = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))[:, None]
    edge_y = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))[:, None]
    smooth = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    noise = (x - smooth).reshape(b, -1).std(dim=1, keepdim=True)
    s = x.shape[-1]
    k = max(1, s // 12)
    total = x.sum(dim=(1, 2, 3))
    inner = x[:, :, k : s - k, k : s - k]
    inner_sum = inner.sum(dim=(1, 2, 3))
    # the input size is fixed per bundle (only the batch axis is dynamic): these are constants
    border = (total - inner_sum) / float(s * s - inner.shape[-1] * inner.shape[-2])
    centre = inner_sum / float(inner.shape[-1] * inner.shape[-2])
    bright = (z > 2.0).to(x.dtype).mean(dim=1, keepdim=True)
    dark = (z < -2.0).to(x.dtype).mean(dim=1, keepdim=True)
    return torch.cat(
        [mean, std, skew, kurt, edge_x, edge_y, noise, (border - centre)[:, None], bright, dark],
        dim=1,
    )


class MultiLayerOOD(nn.Module):
    """A Mahalanobis distance per feature group, each divided by its own in-distribution scale,
    combined by the maximum: ``score = max_g d_g / scale_g``.

    ``scale_g`` is a high percentile of ``d_g`` on images the classifier never trained on, so
    every group flags at about the same rate by itself and the combined score reacts to any
    group that leaves its range (a new scanner's noise, contrast or collimation shows in the
    image statistics and the first blocks even where the last block, which a burned-in marker
    dominates, looks familiar). ``forward`` returns the combined score and the raw distances.
    """

    scales: Tensor

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.groups = nn.ModuleList(MahalanobisOOD(n) for n in sizes)
        self.register_buffer("scales", torch.ones(len(sizes)))

    def set_scales(self, scales: npt.NDArray[np.float64]) -> None:
        """Per-group divisors (positive)."""
        self.scales.copy_(torch.as_tensor(np.maximum(scales, 1e-12), dtype=torch.float32))

    def components(self, features: list[Tensor]) -> Tensor:
        """(B, G) Mahalanobis distance of every group."""
        return torch.stack([g(f) for g, f in zip(self.groups, features, strict=True)], dim=1)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        parts = self.components(features)
        return (parts / self.scales).amax(dim=1), parts
