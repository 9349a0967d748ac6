"""Out-of-distribution guard: Mahalanobis distance of pooled classifier features, in the graph.

The mean and a shrunk precision matrix are fitted on the classifier's training split; the
threshold is set on the error-model split (a high percentile), and the service defers any study
past it whatever P(error) says.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

#: Share of the covariance replaced by a scaled identity (keeps the precision well conditioned).
DEFAULT_SHRINKAGE = 0.1


def fit_gaussian(
    features: npt.NDArray[np.floating], shrinkage: float = DEFAULT_SHRINKAGE
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Mean and precision of ``features`` (N, C), covariance shrunk towards ``trace/C * I``."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (N>=2, C) feature matrix, got shape {x.shape}")
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False)
    c = cov.shape[0]
    target = np.trace(cov) / c * np.eye(c)
    shrunk = (1.0 - shrinkage) * cov + shrinkage * target
    precision = np.linalg.inv(shrunk)
    return mean, (precision + precision.T) / 2.0


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
