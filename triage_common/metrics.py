"""Evaluation metrics on numpy arrays (torch-free, used by training, calibration and evaluation)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


def _rank_average(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    if len(values) == 0:
        return ranks
    first = np.concatenate(([True], sorted_vals[1:] != sorted_vals[:-1]))
    starts = np.flatnonzero(first)
    ends = np.concatenate((starts[1:], [len(values)]))
    group = np.cumsum(first) - 1  # the tie group of each sorted position
    ranks[order] = ((starts + ends + 1) / 2.0)[group]
    return ranks


def auroc(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN if one class is absent."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    n_pos = float((y == 1).sum())
    n_neg = float((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rank_average(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the precision-recall curve (step-wise average precision); NaN if no positive."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos = float((y == 1).sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    tp = np.cumsum(y == 1)
    fp = np.cumsum(y == 0)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # thresholds at distinct scores
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / n_pos
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def macro_auroc(y_true: npt.ArrayLike, probs: npt.ArrayLike) -> float:
    """Mean AUROC over label columns that have both classes."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    values = [auroc(y[:, j], p[:, j]) for j in range(y.shape[1])]
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def youden_threshold(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Threshold maximising sensitivity + specificity - 1 (Youden's J); 0.5 if undefined.

    Among equal J the threshold closest to 0.5 wins, so the rule is deterministic.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    n_pos, n_neg = (y == 1).sum(), (y == 0).sum()
    if n_pos == 0 or n_neg == 0:
        return 0.5
    candidates = np.unique(s)
    best_j, best_t = -np.inf, 0.5
    for t in candidates:
        pred = s >= t
        j = (pred & (y == 1)).sum() / n_pos + (~pred & (y == 0)).sum() / n_neg - 1.0
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best_j, best_t = j, float(t)
    return best_t


def study_errors(y_true: npt.ArrayLike, probs: npt.ArrayLike, thresholds: npt.ArrayLike) -> Array:
    """1.0 where any (non-missing) label's thresholded prediction differs from the truth."""
    y = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(probs, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)[None, :]
    wrong = (pred != (y == 1)) & ~np.isnan(y)
    result: Array = wrong.any(axis=1).astype(np.float64)
    return result


def label_errors(y_true: npt.ArrayLike, probs: npt.ArrayLike, thresholds: npt.ArrayLike) -> Array:
    """Per-label error indicator (NaN where the label is missing)."""
    y = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(probs, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)[None, :]
    out = (pred != (y == 1)).astype(np.float64)
    out[np.isnan(y)] = np.nan
    result: Array = out
    return result


def top_fraction_iou(heatmap: npt.ArrayLike, mask: npt.ArrayLike) -> float:
    """IoU of the top-p% heatmap pixels with the mask, p = the mask's area (Viviano et al. 2020)."""
    h = np.asarray(heatmap, dtype=np.float64).ravel()
    m = np.asarray(mask, dtype=bool).ravel()
    k = int(m.sum())
    if k == 0:
        return float("nan")
    top = np.zeros_like(m)
    top[np.argsort(-h, kind="mergesort")[:k]] = True
    return float((top & m).sum() / (top | m).sum())
