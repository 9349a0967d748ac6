"""The evaluation pieces shared by the training report and ``triage evaluate``, by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from triage_common.evaluation import (
    cam_iou_matrix,
    classifier_aurocs,
    error_detection,
    mean_iou,
    study_error_rate,
    summarise_iou,
)
from triage_common.metrics import macro_auroc


def test_classifier_aurocs_per_finding_and_macro() -> None:
    """Per-finding AUROC by pair counts; the macro mean skips a finding with one class only."""
    truth = np.array([[1, 0], [0, 0], [1, 0], [0, math.nan]])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.4, 0.3], [0.1, 0.2]], dtype=np.float32)
    per_label, macro = classifier_aurocs(truth, probs, ("A", "B"))
    # A: positives 0.9, 0.4 vs negatives 0.6, 0.1 -> 3 of 4 pairs; B has no positive.
    assert per_label["A"] == pytest.approx(0.75, rel=1e-6) and math.isnan(per_label["B"])
    assert macro == pytest.approx(0.75, rel=1e-6)
    assert macro == macro_auroc(truth, probs)  # the same function on the same data: bit-identical


def test_error_detection_and_error_rate() -> None:
    """AUROC and AUPR of a score for the study errors; the error rate of no study is NaN."""
    wrong = np.array([1.0, 0.0, 0.0, 1.0])
    found = error_detection(np.array([0.9, 0.2, 0.5, 0.4]), wrong)
    # errors 0.9, 0.4 vs correct 0.2, 0.5 -> 3 of 4 pairs; ranked 0.9 (e), 0.5, 0.4 (e), 0.2.
    assert found["auroc"] == pytest.approx(0.75, rel=1e-6)
    assert found["aupr_error"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3, rel=1e-6)
    # a mean of 0/1 values: exact up to double rounding, so 1e-12
    assert study_error_rate(wrong) == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(study_error_rate(np.zeros(0)))


def test_cam_iou_matrix_reads_masks_and_honours_present(tmp_path: Path) -> None:
    """IoU where a study has a non-empty mask (and, if given, the finding is present); else NaN."""
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    np.savez(tmp_path / "s1.npz", A=mask, B=np.zeros((4, 4), dtype=bool))
    np.savez(tmp_path / "s2.npz", A=mask)
    cams = np.zeros((3, 2, 2, 2), dtype=np.float32)
    cams[:, :, 0, 0] = 1.0  # the top-left quarter: the mask exactly
    iou = cam_iou_matrix(cams, ("A", "B"), ("s1", "s2", ""), tmp_path)
    assert iou[0, 0] == pytest.approx(1.0, rel=1e-6) and iou[1, 0] == pytest.approx(1.0, rel=1e-6)
    assert np.isnan(iou[0, 1]) and np.isnan(iou[1, 1]) and np.isnan(iou[2]).all()
    present = np.array([[True, True], [False, True], [True, True]])
    kept = cam_iou_matrix(cams, ("A", "B"), ("s1", "s2", ""), tmp_path, present=present)
    assert kept[0, 0] == pytest.approx(1.0, rel=1e-6) and np.isnan(kept[1, 0])
    # means of IoUs that are each 4 / 4 pixels: exact up to double rounding, so 1e-12
    assert summarise_iou(iou, ("A", "B")) == {"A": {"mean": pytest.approx(1.0, abs=1e-12), "n": 2}}
    assert mean_iou(kept, ("A", "B")) == pytest.approx({"A": 1.0}, abs=1e-12)
