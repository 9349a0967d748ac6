"""The policy stage: the decision rule, cost bounds and recalibration, and the calibrated
policy file as the service serves and reloads it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.bundle import Bundle, load_bundle
from service.config import PolicyConfig
from service.core.enums import Decision, DeferReason
from service.core.errors import PolicyOutOfBounds
from service.stages.policy import FilePolicySource, Policy, decide, policy_source
from tests.helpers.policies import make_policy
from triage_common.policy_format import PolicyFileError, write_policy


@pytest.fixture(name="served_bundle", scope="module")
def fixture_served_bundle(phantom_bundle: Path) -> Bundle:
    """The calibration tests' bundle, loaded as the service loads it."""
    return load_bundle(phantom_bundle)


@given(
    p_error=st.floats(0, 1) | st.just(math.nan),
    ood=st.floats(-10, 10) | st.just(math.nan),
    cost=st.floats(0, 1),
    ood_threshold=st.floats(-10, 10),
)
def test_decision_rule(p_error: float, ood: float, cost: float, ood_threshold: float) -> None:
    """AUTO_REPORT iff P(error) <= cost and OOD score <= threshold; reasons list each failure."""
    result = decide(p_error, ood, Policy(defer_cost=cost, ood_threshold=ood_threshold), cost)
    auto = p_error <= cost and ood <= ood_threshold
    assert result.decision == (Decision.AUTO_REPORT if auto else Decision.DEFER)
    assert (DeferReason.P_ERROR_ABOVE_COST in result.reasons) == (not p_error <= cost)
    assert (DeferReason.OUT_OF_DISTRIBUTION in result.reasons) == (not ood <= ood_threshold)


def test_policy_bounds_and_recalibration() -> None:
    """Overrides outside the bounds raise; the recalibration hook maps P(error) before deciding."""
    policy = Policy(
        0.2, 5.0, min_defer_cost=0.1, max_defer_cost=0.5, version="p1", recalibrate=lambda p: p / 2
    )
    # the costs are passed through unchanged, so they compare exactly
    assert policy.cost_for(None) == 0.2 and policy.cost_for(0.5) == 0.5
    for bad in (0.05, 0.6, math.inf):
        with pytest.raises(PolicyOutOfBounds):
            policy.cost_for(bad)
    result = decide(0.3, 0.0, policy, 0.2)
    assert (
        result.p_error == pytest.approx(0.15, abs=1e-12)  # 0.3 / 2 in doubles: rounding only
        and result.p_error_raw == 0.3  # the raw input, kept as given
        and result.decision == Decision.AUTO_REPORT
    )
    assert result.policy_version == "p1"


def test_file_source_serves_the_calibrated_policy(tmp_path: Path, served_bundle: Bundle) -> None:
    """The source's policy carries the file's cost, OOD threshold, map and id."""
    path = tmp_path / "policy.json"
    calibrated = make_policy(served_bundle.bundle_id, cost=0.3)
    write_policy(path, calibrated)
    source = FilePolicySource(path, served_bundle, PolicyConfig())
    policy = source.current()
    # read back from the file's JSON numbers, not computed: exact
    assert (policy.defer_cost, policy.ood_threshold) == (0.3, 12.5)
    assert policy.version == calibrated.policy_id
    low = decide(0.1, 1.0, policy, policy.cost_for(None))  # isotonic maps 0.1 -> 0
    assert low.decision == Decision.AUTO_REPORT and low.policy_version == calibrated.policy_id
    assert low.p_error == pytest.approx(float(calibrated.recalibration([0.1])[0]), rel=1e-6)
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
    # the cost of the file still in force, read from JSON: exact
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


def test_default_bounds_allow_a_lower_cost_only() -> None:
    """Unconfigured, a request may defer more (a lower cost) but not raise the cost in force."""
    policy = Policy(defer_cost=0.2, ood_threshold=5.0)
    assert PolicyConfig().max_defer_cost is None
    assert policy.cost_for(0.05) == 0.05 and policy.cost_for(0.2) == 0.2  # passed through: exact
    with pytest.raises(PolicyOutOfBounds, match=r"bounds \[0.0, 0.2\].*policy.max_defer_cost"):
        policy.cost_for(0.99)


def test_widened_bounds_are_logged(
    served_bundle: Bundle, capsys: pytest.CaptureFixture[str]
) -> None:
    """Allowing costs above the one in force is logged whenever such a policy takes effect."""
    policy_source(served_bundle, PolicyConfig())
    assert "defer_cost_bounds_widened" not in capsys.readouterr().err
    widened = policy_source(served_bundle, PolicyConfig(max_defer_cost=0.9)).current()
    assert widened.cost_for(0.9) == 0.9  # passed through: exact
    assert "defer_cost_bounds_widened" in capsys.readouterr().err
