"""The calibrated policy file: round trip, refusal of another bundle's file, the id check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.policies import make_policy
from triage_common.policy_format import PolicyFileError, read_policy, write_policy


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
