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
