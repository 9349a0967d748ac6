"""Baseline error scores computed from the finding probabilities alone (numpy, torch-free).

Higher means "more likely wrong" (deferred first). Training (``triage train error-model``) and
evaluation of the served bundle (``triage evaluate``) both use these, so the baselines are the
same function everywhere.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def softmax_response_score(probs: npt.ArrayLike, thresholds: npt.ArrayLike) -> F64:
    """Error score of the softmax-response baseline: minus the smallest margin to a threshold."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    margin: F64 = np.abs(p - t[None, :]).min(axis=1)
    return -margin


def entropy_score(probs: npt.ArrayLike) -> F64:
    """Error score of the entropy baseline: the sum of binary entropies."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    total: F64 = -(p * np.log(p) + (1 - p) * np.log(1 - p)).sum(axis=1)
    return total
