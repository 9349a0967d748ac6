"""Metrics used in every report, checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from triage_common.metrics import (
    auroc,
    average_precision,
    label_errors,
    macro_auroc,
    study_errors,
    top_fraction_iou,
    youden_threshold,
)


def test_auroc_matches_pair_count() -> None:
    """AUROC is the share of (positive, negative) pairs ranked correctly, ties counted half."""
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    # positives 0.35, 0.8, 0.4 vs negatives 0.1, 0.4, 0.4: 1 + 3 + (1 + 0.5 + 0.5) = 6 of 9.
    assert auroc(y, s) == pytest.approx(6 / 9, abs=1e-12)


def test_auroc_is_nan_without_both_classes() -> None:
    """A label without negatives has no AUROC rather than a misleading number."""
    assert math.isnan(auroc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_auroc_ignores_missing_labels() -> None:
    """Masked (NaN) labels, as U-Ignore produces, are left out of the AUROC."""
    assert auroc([0, np.nan, 1], [0.1, 0.99, 0.5]) == pytest.approx(1.0, rel=1e-6)


def test_average_precision_hand_example() -> None:
    """Average precision sums precision at each recall step."""
    # ranked: 0.9 (+), 0.8 (-), 0.7 (+): AP = 0.5 * 1 + 0.5 * 2/3.
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3, rel=1e-6)


def test_macro_auroc_averages_defined_labels() -> None:
    """Macro AUROC averages the labels where it is defined."""
    y = np.array([[0, 1], [1, 1], [0, 1], [1, 1]], dtype=float)
    p = np.array([[0.1, 0.3], [0.9, 0.2], [0.2, 0.5], [0.8, 0.1]])
    assert macro_auroc(y, p) == pytest.approx(1.0, rel=1e-6)


def test_youden_threshold_separates_perfectly() -> None:
    """With separable scores the Youden threshold is the lowest positive score."""
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9]) == pytest.approx(0.6, rel=1e-6)


def test_study_error_is_any_label_wrong() -> None:
    """A study is wrong when any non-missing label's thresholded prediction is wrong."""
    y = np.array([[1, 0], [1, np.nan], [0, 0]])
    p = np.array([[0.9, 0.2], [0.8, 0.9], [0.1, 0.7]])
    assert study_errors(y, p, [0.5, 0.5]).tolist() == [0.0, 0.0, 1.0]  # 0/1 flags: exact
    per_label = label_errors(y, p, [0.5, 0.5])
    # 0/1 flags (NaN where the label is missing): exact
    assert per_label[1, 0] == 0.0 and math.isnan(per_label[1, 1]) and per_label[2, 1] == 1.0


def test_top_fraction_iou_hand_example() -> None:
    """IoU of the top-p% pixels, p being the mask's area, as in Viviano et al. 2020."""
    heat = np.array([[0.9, 0.8], [0.1, 0.7]])
    mask = np.array([[True, False], [False, True]])
    # top-2 pixels are (0,0) and (0,1): intersection 1, union 3.
    assert top_fraction_iou(heat, mask) == pytest.approx(1 / 3, rel=1e-6)
