"""The calibrated policy file: round trip, refusal of another bundle's file, the id check."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.policies import make_policy
from triage_common.policy_format import (
    MonitoringReference,
    PolicyFileError,
    read_policy,
    write_policy,
)


def test_round_trip_gives_the_same_policy(tmp_path: Path) -> None:
    """A written policy reads back equal, with the same id and the same recalibration."""
    policy = make_policy("b1")
    path = tmp_path / "policy.json"
    write_policy(path, policy)
    again = read_policy(path, "b1")
    assert again == policy
    assert again.policy_id == policy.policy_id
    p = np.linspace(0, 1, 11)
    # np.allclose's default tolerances, which this check used before
    np.testing.assert_allclose(
        again.recalibration(p), policy.recalibration(p), rtol=1e-5, atol=1e-8, equal_nan=False
    )
    assert not (tmp_path / "policy.json.tmp").exists()


def test_another_bundles_policy_is_refused(tmp_path: Path) -> None:
    """Reading a policy for a different bundle id fails and names both ids."""
    path = tmp_path / "policy.json"
    write_policy(path, make_policy("b1"))
    with pytest.raises(PolicyFileError, match=r"calibrated for bundle b1, not .* b2"):
        read_policy(path, "b2")


def test_edited_policy_fails_its_id_check(tmp_path: Path) -> None:
    """Hand-editing the cost without the id is detected."""
    path = tmp_path / "policy.json"
    write_policy(path, make_policy("b1"))
    path.write_text(path.read_text().replace('"defer_cost": 0.3', '"defer_cost": 0.9', 1))
    with pytest.raises(PolicyFileError, match="policy_id does not match"):
        read_policy(path, "b1")


def _reference() -> MonitoringReference:
    return MonitoringReference(
        defer_cost=0.3,
        studies={"all": 10, "Site A": 10},
        deferral_rate={"all": 0.4, "Site A": 0.4},
        ood_rate={"all": 0.1, "Site A": 0.1},
        p_error_histogram={"all": [1] * 10 + [0] * 10, "Site A": [1] * 10 + [0] * 10},
    )


def test_format_2_round_trips_guard_rails_and_monitoring(tmp_path: Path) -> None:
    """The guard-rails and the monitoring reference read back equal, and a production site the
    calibration set lacks is compared with the pooled group."""
    policy = dataclasses.replace(
        make_policy("b1"),
        guard_rails={"below_floor": ["Pneumothorax"], "allowed_below_floor": True},
        monitoring=_reference(),
    )
    path = tmp_path / "policy.json"
    write_policy(path, policy)
    again = read_policy(path, "b1")
    assert again == policy and again.format == "cxr-triage/policy/2"
    assert again.monitoring is not None
    assert again.monitoring.group("Site A") == "Site A" and again.monitoring.group("new") == "all"
    assert again.monitoring.group("SITE A ") == "Site A"  # the service upper-cases the header


def test_a_format_1_file_still_loads_with_its_id(tmp_path: Path) -> None:
    """A policy written before format 2 (no guard-rails, no monitoring) loads, its id checks."""
    old = dataclasses.replace(make_policy("b1"), format="cxr-triage/policy/1")
    body = old.body()
    assert "monitoring" not in body and "guard_rails" not in body
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**body, "policy_id": old.policy_id}))
    again = read_policy(path, "b1")
    assert again.monitoring is None and again.policy_id == old.policy_id


def test_an_unknown_format_is_refused_naming_the_readable_ones(tmp_path: Path) -> None:
    """A policy of a format this version cannot read is refused with the formats it reads."""
    path = tmp_path / "future.json"
    path.write_text(json.dumps({**make_policy("b1").body(), "format": "cxr-triage/policy/9"}))
    with pytest.raises(PolicyFileError, match="cxr-triage/policy/1, cxr-triage/policy/2"):
        read_policy(path, "b1")
