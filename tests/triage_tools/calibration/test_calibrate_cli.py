"""``triage calibrate`` end to end on a tiny bundle and set; worklist exports; the guarantee."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from service.bundle import load_bundle
from service.config import PolicyConfig
from service.stages.policy import FilePolicySource
from triage_common.datasets import load_dataset
from triage_common.policy_format import read_policy
from triage_tools.calibration.calibrate import CalibrationSet
from triage_tools.calibration.recalibrate import choose_recalibration
from triage_tools.calibration.risk_control import NotEnoughData, certify_cost
from triage_tools.calibration.served import ServedOptions, run_served
from triage_tools.calibration.worklist_export import ExportError, read_worklist_export
from triage_tools.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The tiny test set has 40 studies: the guard-rails' minimums lowered to fit it.
SMALL = ["--min-studies", "20", "--min-errors", "1", "--min-critical-sensitivity", "0"]


def test_calibrate_writes_a_loadable_policy_json_and_plot(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A capacity-based calibration writes a policy the service loads, the sweep and a PNG."""
    out = tmp_path / "policy.json"
    argv = ["calibrate", "--bundle", str(phantom_bundle), "--data", str(tiny_phantoms)]
    argv += ["--out", str(out), "--max-defer-rate", "0.5", "--plot", str(tmp_path / "cal.png")]
    assert main([*argv, *SMALL]) == 0
    captured = capsys.readouterr()
    assert "ECE" in captured.out and "cost sweep" in captured.out
    assert "(n=" in captured.out  # rates are printed with their sample sizes
    assert "trained on" in captured.err  # the set is the bundle's own training set: warned
    bundle = load_bundle(phantom_bundle)
    policy = read_policy(out, bundle.bundle_id)
    assert policy.selection["method"] == "max-defer-rate"
    assert policy.operating_point["deferral_rate"] <= 0.5
    assert policy.operating_point["defer_cost"] == policy.defer_cost
    assert policy.ood_threshold == bundle.ood_threshold
    assert policy.monitoring is not None and policy.monitoring.studies["all"] == 40
    assert policy.guard_rails["critical_findings"] == ["Pneumothorax"]
    cert = policy.data["certification_part"]["studies"]
    assert cert + policy.data["recalibration_part"]["studies"] == 40
    assert policy.operating_point["auto_reported"] <= cert  # measured on the held-out part
    assert policy.data["studies"] == 40 and policy.recalibration.method in (
        "identity",
        "isotonic",
        "platt",
    )
    assert FilePolicySource(out, bundle, PolicyConfig()).current().version == policy.policy_id
    sweep = json.loads((tmp_path / "policy.sweep.json").read_text())
    assert len(sweep["sweep"]) == 201 and sweep["policy_id"] == policy.policy_id
    assert (tmp_path / "cal.png").read_bytes()[:8] == PNG_MAGIC


def test_too_small_a_set_is_refused_with_the_number_needed(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Certifying 2 % on 40 studies is refused (exit 1): it needs at least 149 kept studies."""
    out = tmp_path / "policy.json"
    argv = ["calibrate", "--bundle", str(phantom_bundle), "--data", str(tiny_phantoms)]
    argv += ["--out", str(out), "--target-risk", "0.02", "--delta", "0.05", *SMALL]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "at least 149" in err
    assert sum(line.startswith("triage calibrate: refused") for line in err.splitlines()) == 1
    assert not out.exists()


def test_a_handful_of_studies_is_refused_with_one_line(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14.7: a set below --min-studies labelled studies gives no policy (exit 1) and one
    line naming the minimum and the data, instead of a policy of NaN figures."""
    one = tmp_path / "one"
    one.mkdir()
    lines = (tiny_phantoms / "labels.csv").read_text().splitlines()
    (one / "labels.csv").write_text("\n".join(lines[:2]) + "\n")  # the header and one study
    (one / "dicom").symlink_to(tiny_phantoms / "dicom")
    out = tmp_path / "policy.json"
    argv = ["calibrate", "--bundle", str(phantom_bundle), "--data", str(one)]
    assert main([*argv, "--out", str(out), "--defer-cost", "0.3"]) == 1
    err = capsys.readouterr().err
    refusals = [line for line in err.splitlines() if line.startswith("triage calibrate:")]
    assert len(refusals) == 1 and "--min-studies" in refusals[0] and str(one) in refusals[0]
    assert "1 labelled studies" in refusals[0]
    assert not out.exists()


def test_too_few_errors_to_recalibrate_are_refused(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14.7: a set with fewer errors (or correct studies) than --min-errors is refused."""
    out = tmp_path / "policy.json"
    argv = ["calibrate", "--bundle", str(phantom_bundle), "--data", str(tiny_phantoms)]
    argv += ["--out", str(out), "--defer-cost", "0.3", "--min-studies", "20"]
    assert main([*argv, "--min-errors", "39"]) == 1
    err = capsys.readouterr().err
    assert "--min-errors" in err and "needs at least 39 of each" in err
    assert not out.exists()


def test_a_certificate_needing_more_studies_than_the_set_has_is_refused_up_front(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14.7: the certificate's minimum (149 studies for 2 % at delta 0.05) is checked
    before anything runs, and the refusal names the number."""
    out = tmp_path / "policy.json"
    argv = ["calibrate", "--bundle", str(phantom_bundle), "--data", str(tiny_phantoms)]
    argv += ["--out", str(out), "--target-risk", "0.02", "--delta", "0.05"]
    assert main([*argv, "--min-studies", "20", "--min-errors", "1"]) == 1
    err = capsys.readouterr().err
    assert "needs at least 149 auto-reported studies" in err and "the set has 40" in err
    assert "cost sweep" not in capsys.readouterr().out


def test_low_critical_sensitivity_is_refused_unless_allowed_and_then_recorded(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14.7: a policy whose sensitivity for a critical finding (routing.critical_findings,
    here Pneumothorax) among auto-reported studies is under the floor is refused; with
    --allow-low-critical-sensitivity it is written and the policy records it."""
    from triage_tools.calibration.calibrate import critical_sensitivity

    bundle = load_bundle(phantom_bundle)
    cal = run_served(
        bundle, load_dataset(tiny_phantoms, bundle.labels), ServedOptions(progress=False)
    ).cal
    every = critical_sensitivity(cal, cal.p_error_raw, math.inf, 1.0, ("Pneumothorax",))
    item = every["Pneumothorax"]
    assert 0 <= item["detected"] < item["positives"]  # the random bundle misses some
    out = tmp_path / "policy.json"
    argv = ["calibrate", "--bundle", str(phantom_bundle), "--data", str(tiny_phantoms)]
    argv += ["--out", str(out), "--defer-cost", "1.0", "--recalibration-share", "0"]
    argv += ["--min-studies", "20", "--min-errors", "1", "--min-critical-sensitivity", "1.0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "refused" in x)
    assert "Pneumothorax" in line and "--allow-low-critical-sensitivity" in line
    assert f"({item['detected']} of {item['positives']})" in line
    assert not out.exists()
    assert main([*argv, "--allow-low-critical-sensitivity"]) == 0
    captured = capsys.readouterr()
    assert "critical findings among the auto-reported studies" in captured.out
    rails = read_policy(out, bundle.bundle_id).guard_rails
    assert rails["below_floor"] == ["Pneumothorax"] and rails["allowed_below_floor"] is True
    recorded = rails["critical_sensitivity_auto_reported"]["Pneumothorax"]
    assert recorded["positives"] == item["positives"]
    assert recorded["detected"] == item["detected"]


def test_a_missing_data_path_is_one_line_with_exit_2(
    phantom_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14.9: `triage calibrate --data /nonexistent` says in one line that the path does not
    exist (exit 2, no traceback)."""
    argv = ["calibrate", "--bundle", str(phantom_bundle), "--data", "/nonexistent"]
    assert main([*argv, "--out", str(tmp_path / "p.json"), "--defer-cost", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "triage calibrate: --data /nonexistent does not exist"


def test_worklist_export_calibrates_and_refuses_other_bundles_lines(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Export lines of this bundle calibrate; lines of another bundle are refused by count."""
    bundle = load_bundle(phantom_bundle)
    cal = run_served(
        bundle, load_dataset(tiny_phantoms, bundle.labels), ServedOptions(progress=False)
    ).cal
    lines = []
    for i in range(len(cal)):
        final = {
            label: (None if math.isnan(v) else bool(v))
            for label, v in zip(bundle.labels, cal.truth[i], strict=True)
        }
        if i == 1:
            del final[bundle.labels[-1]]  # a label left unread: unknown
        lines.append(
            {
                "study_uid_hash": f"h{i}",
                "bundle_id": bundle.bundle_id if i % 10 else "0123456789abcdef",
                "site": cal.sites[i],
                "labels": list(bundle.labels),
                "probabilities": cal.probabilities[i].tolist(),
                "p_error_raw": float(cal.p_error_raw[i]),
                "ood_score": float(cal.ood_score[i]),
                "final_labels": final,
            }
        )
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    read = read_worklist_export(export, bundle)
    assert read.refused == 4 and read.other_bundles == {"0123456789abcdef": 4}
    assert len(read.cal) == 36 and read.cal.patient_ids[0] == "h1"
    assert np.isnan(read.cal.truth[0, -1])
    kept = cal.probabilities[[i % 10 != 0 for i in range(40)]]
    # np.allclose's default tolerances, which this check used before
    np.testing.assert_allclose(read.cal.probabilities, kept, rtol=1e-5, atol=1e-8, equal_nan=False)
    out = tmp_path / "policy.json"
    argv = ["calibrate", "--bundle", str(phantom_bundle), "--worklist-export", str(export)]
    argv += ["--out", str(out), "--defer-cost", "0.5", *SMALL]
    assert main(argv) == 0
    assert "refused 4 line(s)" in capsys.readouterr().err
    assert read_policy(out, bundle.bundle_id).defer_cost == 0.5  # the --defer-cost given: exact
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps({**lines[0], "bundle_id": "ffff"}) + "\n")
    with pytest.raises(ExportError, match="all 1 lines were made by other bundles"):
        read_worklist_export(foreign, bundle)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({k: v for k, v in lines[1].items() if k != "ood_score"}) + "\n")
    with pytest.raises(ExportError, match=r"broken.jsonl:1: missing keys \['ood_score'\]"):
        read_worklist_export(broken, bundle)


def test_guarantee_holds_with_recalibration_fitted_on_the_same_set() -> None:
    """Recalibrating on the calibration set, then certifying on the recalibrated scores as
    ``triage calibrate`` does, keeps the violation rate at most delta in simulation."""
    rng = np.random.default_rng(5)
    target, delta, trials = 0.05, 0.1, 300
    grid = np.round(np.arange(0.0, 1.0001, 0.005), 6)
    fine = np.linspace(0.0, 1.0, 20001)
    violations = 0
    with np.errstate(over="ignore"):
        for _ in range(trials):
            score = rng.uniform(0, 1, 1000)
            wrong = rng.uniform(0, 1, 1000) < 0.3 * score**2
            recal, _ = choose_recalibration(score, wrong, seed=0)
            try:
                chosen = certify_cost(recal(score), wrong, np.ones(1000), grid, target, delta)
            except NotEnoughData:
                continue
            kept = fine[recal(fine) <= chosen.cost]  # the served rule keeps raw scores <= tau
            tau = float(kept.max()) if len(kept) else 0.0
            violations += 0.1 * tau**2 > target  # true risk of keeping scores <= tau
    assert violations / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)


def test_calibration_set_subset_keeps_rows_aligned() -> None:
    """Subsetting by positions (with repeats) or by a mask keeps every array aligned."""
    cal = CalibrationSet(
        labels=("a",),
        thresholds=np.array([0.5]),
        probabilities=np.array([[0.1], [0.7], [0.9]]),
        p_error_raw=np.array([0.2, 0.5, 0.8]),
        ood_score=np.array([1.0, 2.0, 3.0]),
        truth=np.array([[0.0], [1.0], [0.0]]),
        sites=("x", "y", "z"),
        source="test",
        patient_ids=("p", "q", "r"),
    )
    sub = cal.subset([2, 2, 0])
    assert sub.sites == ("z", "z", "x") and sub.patient_ids == ("r", "r", "p")
    assert sub.wrong.tolist() == [1.0, 1.0, 0.0]  # 0/1 flags: exact
    assert cal.subset(np.array([False, True, False])).p_error_raw.tolist() == [0.5]  # copied
