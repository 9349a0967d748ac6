"""Evaluation pieces shared by the training report (``triage train error-model``) and ``triage
evaluate`` (numpy only).

* the classifier of one group of studies: per-finding AUROC and their macro mean
  (:func:`classifier_aurocs`), the study error rate (:func:`study_error_rate`);
* failure detection by one deferral score: AUROC and AUPR of predicting a study error
  (:func:`error_detection`);
* CAM localisation: the top-p% IoU of each study's CAM with its phantom mask, per study and
  finding (:func:`cam_iou_matrix`), and its summaries per finding (:func:`summarise_iou`,
  :func:`mean_iou`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from triage_common.metrics import auroc, average_precision, macro_auroc, top_fraction_iou
from triage_common.preprocess import resize

F64 = npt.NDArray[np.float64]


def classifier_aurocs(
    truth: npt.ArrayLike, probabilities: npt.ArrayLike, labels: Sequence[str]
) -> tuple[dict[str, float], float]:
    """Per-finding AUROC (NaN where a class is absent) and the macro AUROC (their mean over the
    findings with both classes, :func:`~triage_common.metrics.macro_auroc`)."""
    y = np.asarray(truth, dtype=np.float64)
    p = np.asarray(probabilities)
    per_label = {label: auroc(y[:, j], p[:, j]) for j, label in enumerate(labels)}
    return per_label, macro_auroc(y, p)


def study_error_rate(wrong: F64) -> float:
    """Share of studies with an error (NaN for no study)."""
    return float(wrong.mean()) if len(wrong) else math.nan


def error_detection(score: npt.ArrayLike, wrong: npt.ArrayLike) -> dict[str, float]:
    """AUROC and AUPR (errors positive) of a deferral score predicting a study error."""
    return {"auroc": auroc(wrong, score), "aupr_error": average_precision(wrong, score)}


def cam_iou_matrix(
    cams: npt.NDArray[np.float32],
    labels: Sequence[str],
    sop_uids: Sequence[str],
    masks_dir: Path,
    *,
    present: npt.NDArray[np.bool_] | None = None,
) -> F64:
    """(N, L) top-p% IoU of each study's CAM with its phantom mask; NaN where there is none.

    ``cams`` is (N, L, h, w); a finding counts where ``masks_dir/<sop_uid>.npz`` has a non-empty
    square mask for it (and, with ``present``, where ``present[i, j]``); the CAM is resized
    (bilinear) to the mask's frame first.
    """
    out = np.full((len(sop_uids), len(labels)), np.nan)
    for i, sop in enumerate(sop_uids):
        path = masks_dir / f"{sop}.npz"
        if not sop or not path.exists():
            continue
        with np.load(path) as masks:
            for j, label in enumerate(labels):
                if (present is not None and not present[i, j]) or label not in masks:
                    continue
                mask = masks[label]
                if mask.ndim != 2 or mask.shape[0] != mask.shape[1] or not mask.any():
                    continue
                heat = resize(cams[i, j].astype(np.float32), mask.shape[0])
                out[i, j] = top_fraction_iou(heat, mask)
    return out


def summarise_iou(iou: F64, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean IoU and count per finding (findings with no mask left out)."""
    result: dict[str, dict[str, float]] = {}
    for j, label in enumerate(labels):
        column = iou[:, j]
        column = column[np.isfinite(column)]
        if len(column):
            result[label] = {"mean": float(column.mean()), "n": len(column)}
    return result


def mean_iou(iou: F64, labels: Sequence[str]) -> dict[str, float]:
    """Mean IoU per finding (findings with no mask left out)."""
    return {label: item["mean"] for label, item in summarise_iou(iou, labels).items()}


#: Studies shuffled together by :func:`similar_probability_permutation`.
PERMUTATION_BLOCK = 10


def similar_probability_permutation(
    probabilities: F64, thresholds: F64, rng: np.random.Generator, block: int = PERMUTATION_BLOCK
) -> npt.NDArray[np.int64]:
    """A permutation that moves each study's maps to a study with similar probabilities: studies
    with the same predicted findings, sorted by their summed logits, are shuffled within
    consecutive blocks of ``block``. What the maps add beyond the probabilities is what the
    Grad-CAM error model loses when fed these maps."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    pattern = (p >= thresholds[None, :]).astype(np.int64) @ (2 ** np.arange(p.shape[1]))
    key = np.log(p / (1 - p)).sum(axis=1)
    perm = np.arange(len(p), dtype=np.int64)
    for value in np.unique(pattern):
        rows = np.flatnonzero(pattern == value)
        rows = rows[np.argsort(key[rows], kind="mergesort")]
        for start in range(0, len(rows), block):
            chunk = rows[start : start + block]
            perm[chunk] = rng.permutation(chunk)
    return perm
