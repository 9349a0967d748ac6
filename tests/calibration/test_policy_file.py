"""The calibrated policy file: round trip, refusal of another bundle's file, reload semantics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.bundle import Bundle, load_bundle
from service.config import PolicyConfig
from service.core.enums import Decision
from service.stages.policy import FilePolicySource, decide, policy_source
from triage_common.policy_format import (
    CalibratedPolicy,
    PolicyFileError,
    read_policy,
    write_policy,
)
from triage_tools.calibration.recalibrate import fit_isotonic


def make_policy(bundle_id: str, cost: float = 0.3) -> CalibratedPolicy:
    """A policy with an isotonic map, an operating point and a data summary."""
    recal = fit_isotonic([0.1, 0.2, 0.3, 0.6, 0.9], [0, 0, 1, 0, 1])
    return CalibratedPolicy(
        bundle_id=bundle_id,
        defer_cost=cost,
        recalibration=recal,
        ood_threshold=12.5,
        created="2026-01-01T00:00:00Z",
        selection={"method": "explicit"},
        operating_point={"defer_cost": cost, "deferral_rate": 0.4, "auto_error_rate": None},
        data={"studies": 5, "sites": {"a": 5}},
        metrics={"ece_before": 0.1, "ece_after": 0.05},
    )


@pytest.fixture(name="served_bundle", scope="module")
def fixture_served_bundle(phantom_bundle: Path) -> Bundle:
    """The calibration tests' bundle, loaded as the service loads it."""
    return load_bundle(phantom_bundle)


def test_round_trip_gives_the_same_policy(tmp_path: Path) -> None:
    """A written policy reads back equal, with the same id and the same recalibration."""
    policy = make_policy("b1")
    path = tmp_path / "policy.json"
    write_policy(path, policy)
    again = read_policy(path, "b1")
    assert again == policy
    assert again.policy_id == policy.policy_id
    p = np.linspace(0, 1, 11)
    assert np.allclose(again.recalibration(p), policy.recalibration(p))
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


def test_file_source_serves_the_calibrated_policy(tmp_path: Path, served_bundle: Bundle) -> None:
    """The source's policy carries the file's cost, OOD threshold, map and id."""
    path = tmp_path / "policy.json"
    calibrated = make_policy(served_bundle.bundle_id, cost=0.3)
    write_policy(path, calibrated)
    source = FilePolicySource(path, served_bundle, PolicyConfig())
    policy = source.current()
    assert (policy.defer_cost, policy.ood_threshold) == (0.3, 12.5)
    assert policy.version == calibrated.policy_id
    low = decide(0.1, 1.0, policy, policy.cost_for(None))  # isotonic maps 0.1 -> 0
    assert low.decision == Decision.AUTO_REPORT and low.policy_version == calibrated.policy_id
    assert low.p_error == pytest.approx(float(calibrated.recalibration([0.1])[0]))
    assert decide(0.1, 20.0, policy, 0.3).decision == Decision.DEFER  # OOD threshold of the file


def test_reload_swaps_good_files_and_keeps_the_old_policy_on_bad_ones(
    tmp_path: Path, served_bundle: Bundle
) -> None:
    """A valid new file replaces the policy; a broken or foreign one leaves it in force."""
    path = tmp_path / "policy.json"
    write_policy(path, make_policy(served_bundle.bundle_id, cost=0.3))
    source = FilePolicySource(path, served_bundle, PolicyConfig())
    second = make_policy(served_bundle.bundle_id, cost=0.6)
    write_policy(path, second)
    assert source.reload() and source.current().version == second.policy_id
    path.write_text("{ not json")
    assert not source.reload() and source.current().version == second.policy_id
    write_policy(path, make_policy("another-bundle", cost=0.1))
    assert not source.reload() and source.current().defer_cost == 0.6
    write_policy(path, make_policy(served_bundle.bundle_id, cost=0.95))
    with pytest.raises(PolicyFileError, match="outside"):
        FilePolicySource(path, served_bundle, PolicyConfig(max_defer_cost=0.9))


def test_policy_source_refuses_a_foreign_file_and_a_double_cost(
    tmp_path: Path, served_bundle: Bundle
) -> None:
    """``policy.file`` for another bundle, or together with ``policy.defer_cost``, is refused."""
    path = tmp_path / "policy.json"
    write_policy(path, make_policy("another-bundle"))
    with pytest.raises(PolicyFileError, match="another-bundle"):
        policy_source(served_bundle, PolicyConfig(file=str(path)))
    write_policy(path, make_policy(served_bundle.bundle_id))
    with pytest.raises(PolicyFileError, match="both set"):
        policy_source(served_bundle, PolicyConfig(file=str(path), defer_cost=0.2))
    assert policy_source(served_bundle, PolicyConfig()).current().version == ""
