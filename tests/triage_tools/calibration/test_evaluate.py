"""``triage evaluate``: metric assembly checked against hand-computed values, then end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from triage_common.evaluation import similar_probability_permutation, summarise_iou
from triage_common.policy_format import Recalibration
from triage_tools.calibration import evaluate as ev
from triage_tools.calibration.calibrate import CalibrationSet
from triage_tools.cli import main

NAN = float("nan")


@pytest.fixture(name="hand_set")
def fixture_hand_set() -> CalibrationSet:
    """Six studies, two findings (threshold 0.5), four patients, two sites; study 5 is OOD.

    Study errors: 1 (A predicted, absent) and 3 (A missed); study 5's B label is unknown.
    """
    return CalibrationSet(
        labels=("A", "B"),
        thresholds=np.array([0.5, 0.5]),
        probabilities=np.array(
            [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.4, 0.3], [0.1, 0.2], [0.7, 0.9]]
        ),
        p_error_raw=np.array([0.1, 0.7, 0.3, 0.4, 0.2, 0.5]),
        ood_score=np.array([1.0, 1.0, 1.0, 1.0, 1.0, 20.0]),
        truth=np.array([[1, 0], [0, 0], [0, 1], [1, 0], [0, 0], [1, NAN]], dtype=float),
        sites=("s1", "s1", "s1", "s2", "s2", "s2"),
        source="hand",
        patient_ids=("p1", "p1", "p2", "p3", "p3", "p4"),
    )


@pytest.fixture(name="hand_policy")
def fixture_hand_policy() -> ev.PolicyView:
    """Cost 0.35, no recalibration, OOD threshold 10: auto-reports studies 0, 2 and 4."""
    return ev.PolicyView(0.35, 10.0, Recalibration("identity"))


def test_metrics_match_hand_computed_values(
    hand_set: CalibrationSet, hand_policy: ev.PolicyView
) -> None:
    """Every assembled metric equals its value worked out by hand in the comments."""
    m = ev.group_metrics(hand_set, hand_policy)
    assert m["study_error_rate"] == pytest.approx(2 / 6, rel=1e-6)
    # A: positives 0.9, 0.4, 0.7 vs negatives 0.6, 0.2, 0.1 -> 8 of 9 pairs; B: 1.0.
    assert m["auroc"] == pytest.approx({"A": 8 / 9, "B": 1.0}, rel=1e-6)
    assert m["macro_auroc"] == pytest.approx((8 / 9 + 1.0) / 2, rel=1e-6)
    pol = m["policy"]
    assert pol["auto_reported"] == 3 and pol["deferral_rate"] == pytest.approx(0.5, rel=1e-6)
    assert pol["accuracy_all"] == pytest.approx(4 / 6, rel=1e-6)
    assert pol["accuracy_auto"] == pytest.approx(1.0, abs=1e-12)  # 3 of 3 kept right: rounding only
    assert pol["macro_auroc_auto"] == pytest.approx(1.0, rel=1e-6)
    em = m["error_detection"]["error_model"]
    # errors score 0.7 and 0.4; correct 0.1, 0.3, 0.2, 0.5 -> 7 of 8 pairs.
    assert em["auroc"] == pytest.approx(7 / 8, rel=1e-6)
    # ranked 0.7 (err), 0.5, 0.4 (err): precision 1 at recall 1/2, 2/3 at recall 1.
    assert em["aupr_error"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, rel=1e-6)
    # kept in order 0.1 0.2 0.3 0.4(err) 0.5 0.7(err): risks 0 0 0 1/4 1/5 2/6.
    assert em["aurc"] == pytest.approx((1 / 4 + 1 / 5 + 2 / 6) / 6, rel=1e-6)
    oracle_aurc = (1 / 5 + 2 / 6) / 6
    assert em["e_aurc"] == pytest.approx((1 / 4 + 1 / 5 + 2 / 6) / 6 - oracle_aurc, rel=1e-6)
    # keep 5, 5, 4, 3 lowest-score studies.
    assert em["accuracy_at_deferral"] == pytest.approx(
        {"0.1": 0.8, "0.2": 0.8, "0.3": 0.75, "0.5": 1.0}, rel=1e-6
    )
    # softmax response: both errors have the smallest margin (0.1): a perfect ranking.
    assert m["error_detection"]["softmax_response"]["auroc"] == pytest.approx(1.0, rel=1e-6)
    rnd = m["error_detection"]["random"]
    assert (rnd["auroc"], rnd["aurc"]) == pytest.approx((0.5, 2 / 6), rel=1e-6)
    assert rnd["accuracy_at_deferral"]["0.3"] == pytest.approx(4 / 6, rel=1e-6)
    oracle = m["error_detection"]["oracle"]
    assert (oracle["auroc"], oracle["aurc"], oracle["e_aurc"]) == pytest.approx(
        (1.0, oracle_aurc, 0.0), rel=1e-6
    )
    assert m["ood_flag_rate"] == pytest.approx(1 / 6, rel=1e-6)


def test_subgroups_add_view_sex_and_age_bands(hand_set: CalibrationSet) -> None:
    """Subgroup tables: each view, each sex and each age band the set has, after the sites."""
    cal = CalibrationSet(
        **{
            **hand_set.__dict__,
            "views": ("AP", "PA", "PA", "AP", "PA", "PA"),
            "sexes": ("F", "M", "F", "F", "M", "M"),
            "ages": np.array([25.0, 39.9, 40.0, 64.0, 65.0, 90.0]),
        }
    )
    groups = ev.subgroups(cal)
    assert list(groups)[:3] == ["all", "site: s1", "site: s2"]
    assert groups["view: AP"].tolist() == [True, False, False, True, False, False]
    assert groups["sex: M"].sum() == 3
    assert groups["age: <40"].tolist() == [True, True, False, False, False, False]
    assert groups["age: 40-64"].sum() == 2 and groups["age: 65+"].sum() == 2


def test_realised_risk_and_augrc_of_the_hand_set(
    hand_set: CalibrationSet, hand_policy: ev.PolicyView
) -> None:
    """The policy's realised risk is the error rate of the auto-reported studies (0 of 3), and
    AUGRC is the mean of errors-kept / n over coverages."""
    m = ev.group_metrics(hand_set, hand_policy)
    assert m["policy"]["risk_auto"] == pytest.approx(0.0, abs=1e-12)
    assert m["policy"]["auto_errors"] == 0
    # kept in score order 0.1 0.2 0.3 0.4(err) 0.5 0.7(err): generalized risks 0 0 0 1 1 2 /6
    assert m["error_detection"]["error_model"]["augrc"] == pytest.approx(4 / 36, rel=1e-9)
    # random: expected generalized risk (k/n) * rate, mean (n+1)/(2n) * rate
    assert m["error_detection"]["random"]["augrc"] == pytest.approx(7 / 12 * 2 / 6, rel=1e-9)


def test_cam_concentration_scores_spread_maps_higher() -> None:
    """A map with all its mass in one cell scores lower (looks right) than a flat one, on both
    concentration scores; an empty map counts as fully spread."""
    cams = np.zeros((3, 1, 4, 4), dtype=np.float32)
    cams[0, 0, 1, 1] = 5.0
    cams[1, 0] = 1.0
    scores = ev.cam_concentration(cams)
    assert scores["cam_entropy"][0] == pytest.approx(0.0, abs=1e-12)
    assert scores["cam_entropy"][1] == pytest.approx(1.0, rel=1e-9)
    assert scores["cam_entropy"][2] == pytest.approx(1.0, rel=1e-9)
    assert scores["cam_top5"][0] == pytest.approx(-1.0, rel=1e-9)
    assert scores["cam_top5"][1] == pytest.approx(-1 / 16, rel=1e-9)


def test_similar_probability_permutation_stays_within_prediction_patterns() -> None:
    """The ablation moves maps only among studies with the same predicted findings, within
    blocks of similar summed logits, and really moves them."""
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, (200, 3))
    thresholds = np.array([0.5, 0.4, 0.6])
    perm = similar_probability_permutation(probs, thresholds, np.random.default_rng(1))
    assert sorted(perm.tolist()) == list(range(200))
    pattern = (probs >= thresholds).astype(int) @ np.array([1, 2, 4])
    assert np.array_equal(pattern[perm], pattern)
    assert (perm != np.arange(200)).mean() > 0.5


def test_groups_set_the_heldout_site_apart(hand_set: CalibrationSet) -> None:
    """Groups are all studies and one per site, the held-out site marked as such."""
    groups = ev.site_groups(hand_set, heldout_sites=("s2",))
    assert list(groups) == ["all", "site: s1", "site: s2 (held out)"]
    assert groups["site: s2 (held out)"].tolist() == [False, False, False, True, True, True]


def test_bootstrap_resamples_patients_with_a_seed(
    hand_set: CalibrationSet, hand_policy: ev.PolicyView
) -> None:
    """Same seed, same intervals; with a single patient every resample is the same set."""
    one = ev.bootstrap(hand_set, hand_policy, resamples=50, seed=1)
    assert one == ev.bootstrap(hand_set, hand_policy, resamples=50, seed=1)  # bit for bit
    lo, hi = one["policy.accuracy_all"]
    assert 0.0 <= lo <= 4 / 6 <= hi <= 1.0
    single = CalibrationSet(**{**hand_set.__dict__, "patient_ids": ("p",) * 6})
    fixed = ev.bootstrap(single, hand_policy, resamples=20, seed=0)
    assert fixed["error_model.auroc"] == pytest.approx((7 / 8, 7 / 8), rel=1e-6)
    assert fixed["error_model-softmax_response.auroc"] == pytest.approx((-1 / 8, -1 / 8), rel=1e-6)


def test_cam_iou_uses_the_mask_frame(tmp_path: Path) -> None:
    """A CAM peaked where the mask is gives IoU 1; an empty mask is not counted."""
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    np.savez(tmp_path / "sop1.npz", A=mask, B=np.zeros((4, 4), dtype=bool))
    cams = np.zeros((1, 2, 2, 2), dtype=np.float32)
    cams[0, :, 0, 0] = 1.0
    cal = CalibrationSet(
        labels=("A", "B"),
        thresholds=np.array([0.5, 0.5]),
        probabilities=np.array([[0.9, 0.1]]),
        p_error_raw=np.array([0.1]),
        ood_score=np.array([0.0]),
        truth=np.array([[1.0, 0.0]]),
        sites=("s",),
        source="t",
        sop_uids=("sop1",),
        cams=cams,
    )
    iou = ev.cam_iou_per_study(cal, tmp_path)
    assert iou[0, 0] == pytest.approx(1.0, rel=1e-6) and np.isnan(iou[0, 1])
    # one IoU of 4 / 4 pixels: exact up to double rounding, so 1e-12
    assert summarise_iou(iou, cal.labels) == {"A": {"mean": pytest.approx(1.0, abs=1e-12), "n": 1}}


def test_evaluate_cli_writes_report_figures_and_summary(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path
) -> None:
    """The command scores every baseline on the evaluation set itself (the bundle's evaluation
    graph), builds in the permutation ablation, and writes report.json, summary.md and PNGs per
    site, view, sex and age band, with AUGRC, the policy's realised risk, CAM IoU and where the
    maps sit on the anatomy masks."""
    out = tmp_path / "report"
    argv = ["evaluate", "--bundle", str(phantom_bundle), "--data", str(tiny_phantoms)]
    argv += ["--out", str(out), "--resamples", "5", "--permutations", "2"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    groups = report["groups"]
    assert groups["all"]["studies"] == 40
    assert any(name.endswith("(held out)") for name in groups)
    assert {"view: PA", "sex: F", "sex: M", "film: portable", "film: not portable"} <= set(groups)
    assert any(name.startswith("age: ") for name in groups)
    assert set(groups["all"]["error_detection"]) == {*ev.METHOD_ORDER, "random", "oracle"}
    assert report["permutation"]["draws"] == 2 and not report["baselines_missing"]
    for key in ("error_model.auroc", "gradcam-probs_only.auroc", "gradcam-gradcam_permuted.auroc"):
        assert key in groups["all"]["intervals"], key
    assert "augrc" in groups["all"]["error_detection"]["probs_only"]
    policy = groups["all"]["policy"]
    assert policy["auto_reported"] + round(policy["deferral_rate"] * 40) == 40
    assert "policy.risk_auto" in groups["all"]["intervals"]
    assert groups["all"]["cam_iou"]  # phantom masks were found
    assert set(groups["all"]["map_mass"]) == set(report["labels"])
    # the served error model is the run's Grad-CAM model: the evaluation graph agrees with it
    detection = groups["all"]["error_detection"]
    assert detection["gradcam"]["auroc"] == pytest.approx(
        detection["error_model"]["auroc"], abs=0.02
    )
    summary = (out / "summary.md").read_text()
    assert "## Failure detection" in summary and "probabilities-only network" in summary
    assert "AUGRC" in summary and "realised risk" in summary and "maps permuted" in summary
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "risk_coverage_all.png" in pngs and "per_site_auroc.png" in pngs
