"""``triage monitor``: a worklist export against the policy's per-site expectation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.policies import make_policy
from triage_common.policy_format import MonitoringReference, p_error_histogram, write_policy
from triage_tools.cli import main


def _policy(tmp_path: Path) -> Path:
    """A policy whose calibration set deferred 40 % at both sites, P(error) around 0.3."""
    rng = np.random.default_rng(0)
    hist = p_error_histogram(np.clip(rng.normal(0.3, 0.05, 1000), 0, 1))
    reference = MonitoringReference(
        defer_cost=0.3,
        studies={"all": 1000, "North": 500, "South": 500},
        deferral_rate={"all": 0.4, "North": 0.4, "South": 0.4},
        ood_rate={"all": 0.02, "North": 0.02, "South": 0.02},
        p_error_histogram={"all": hist, "North": hist, "South": hist},
    )
    path = tmp_path / "policy.json"
    write_policy(path, dataclasses.replace(make_policy("b1"), monitoring=reference))
    return path


def _items(site: str, n: int, defer: float, ood: float, mean: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        flagged = i < ood * n
        deferred = flagged or i < (ood + defer) * n
        out.append(
            {
                "item_id": f"{site}-{i}",
                "site": site,
                "decision": "DEFER" if deferred else "AUTO_REPORT",
                "defer_reasons": "OUT_OF_DISTRIBUTION" if flagged else "",
                "p_error": float(np.clip(rng.normal(mean, 0.05), 0, 1)),
            }
        )
    return out


def test_monitor_flags_the_site_that_drifted_and_not_the_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A site deferring and flagging as calibrated passes; one whose P(error) moved, deferral
    rose and OOD flags tripled raises all three alerts (exit 1), each naming the site and n."""
    policy = _policy(tmp_path)
    export = tmp_path / "items.json"
    items = _items("North", 300, 0.38, 0.02, 0.3, 1) + _items("South", 300, 0.5, 0.1, 0.5, 2)
    export.write_text(json.dumps(items))
    assert main(["monitor", "--export", str(export), "--policy", str(policy),
                 "--out", str(tmp_path / "m.json")]) == 1  # fmt: skip
    captured = capsys.readouterr()
    alerts = [line for line in captured.err.splitlines() if "alert" in line]
    assert any("South: deferral rate" in a and "(n=300)" in a for a in alerts)
    assert any("South: OOD rate" in a for a in alerts) and any(
        "South: P(error) PSI" in a for a in alerts
    )
    assert not any("North" in a for a in alerts)
    summary = json.loads((tmp_path / "m.json").read_text())
    north = next(g for g in summary["groups"] if g["group"] == "North")
    assert north["p_error_psi"] < 0.1 and north["compared_with"] == "North"


def test_monitor_passes_a_calibration_like_export_and_reads_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export like the calibration set exits 0; a CSV export reads the same."""
    policy = _policy(tmp_path)
    items = _items("North", 250, 0.38, 0.02, 0.3, 3) + _items("Elsewhere", 250, 0.38, 0.02, 0.3, 4)
    export = tmp_path / "items.csv"
    header = list(items[0])
    lines = [",".join(header)] + [",".join(str(i[k]) for k in header) for i in items]
    export.write_text("\n".join(lines) + "\n")
    assert main(["monitor", "--export", str(export), "--policy", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "Elsewhere" in out and "all" in out  # an unknown site is compared with all


def test_monitor_refuses_missing_files_and_old_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing export, or a policy without a monitoring reference, is one line, exit 2."""
    policy = _policy(tmp_path)
    assert main(["monitor", "--export", str(tmp_path / "none.json"), "--policy", str(policy)]) == 2
    assert "--export" in capsys.readouterr().err
    old = tmp_path / "old.json"
    write_policy(old, make_policy("b1"))
    export = tmp_path / "items.json"
    export.write_text(json.dumps(_items("North", 5, 0.4, 0.0, 0.3, 5)))
    assert main(["monitor", "--export", str(export), "--policy", str(old)]) == 2
    assert "no monitoring reference" in capsys.readouterr().err
