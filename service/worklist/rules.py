"""The worklist's rules as pure functions: replay or re-triage, review flags, and read checks.

- :func:`same_inputs`: a result replays the study's latest stored one when bundle, policy
  version and defer cost are all equal (the decision inputs); anything else is a re-triage.
- :func:`review_reason`: why a re-triage of a claimed or completed item needs a reader's look
  (empty when it does not): the decision changed, the routed priority rose, or a finding is
  present that the earlier result did not have (a new critical finding always is one of these).
- :func:`checked_read`: a read (final labels) names every label of the item's result exactly
  once, each present, absent or explicitly not assessed (``None``), and no other label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.core.enums import Priority
from service.core.errors import WorklistError


@dataclass(frozen=True)
class ResultFacts:
    """What the rules compare between two results of one study."""

    bundle_id: str
    policy_version: str | None  # None: unknown (stored before schema 2)
    defer_cost: float | None
    decision: str  # "" when unknown
    findings_present: tuple[str, ...]
    priority: Priority


def same_inputs(stored: ResultFacts, new: ResultFacts) -> bool:
    """True when ``new`` was decided from the same inputs as ``stored`` (replay it)."""
    return (
        stored.bundle_id == new.bundle_id
        and stored.policy_version is not None
        and stored.policy_version == new.policy_version
        and stored.defer_cost is not None
        and stored.defer_cost == new.defer_cost  # the same double, stored and read back exactly
    )


def describe_change(before: ResultFacts, after: ResultFacts) -> str:
    """The decision inputs that differ, for the audit (``bundle a -> b; cost 0.2 -> 0.1``)."""
    parts = []
    if before.bundle_id != after.bundle_id:
        parts.append(f"bundle {before.bundle_id} -> {after.bundle_id}")
    if before.policy_version != after.policy_version:
        parts.append(f"policy {_policy(before.policy_version)} -> {_policy(after.policy_version)}")
    if before.defer_cost != after.defer_cost:
        parts.append(f"cost {_cost(before.defer_cost)} -> {_cost(after.defer_cost)}")
    if before.decision != after.decision:
        parts.append(f"decision {before.decision or 'unknown'} -> {after.decision}")
    return "; ".join(parts) or "same decision inputs"


def _policy(version: str | None) -> str:
    return "unknown" if version is None else (version or "none")


def _cost(cost: float | None) -> str:
    return "unknown" if cost is None else f"{cost:g}"


def review_reason(before: ResultFacts, after: ResultFacts, state: str) -> str:
    """Why a re-triage of an item in ``state`` (CLAIMED, COMPLETED) needs review; "" if not."""
    reasons = []
    if not before.decision:
        reasons.append("the earlier result's decision is unknown")
    elif before.decision != after.decision:
        reasons.append(f"decision {before.decision} -> {after.decision}")
    if after.priority > before.priority:
        reasons.append(f"priority {before.priority.name} -> {after.priority.name}")
    gained = sorted(set(after.findings_present) - set(before.findings_present))
    if gained:
        reasons.append("newly present: " + ", ".join(gained))
    if not reasons:
        return ""
    when = "while claimed" if state == "CLAIMED" else "after completion"
    return f"re-triaged {when} (bundle {after.bundle_id}): " + "; ".join(reasons)


def checked_read(
    labels: Sequence[str], given: Mapping[str, bool | None], what: str = "completing"
) -> dict[str, bool | None]:
    """``given`` when it covers exactly ``labels``; otherwise WorklistError naming the problem.

    ``labels`` empty means the result's labels are unknown (an item stored before schema 2):
    then any non-empty read is taken as it is.
    """
    if not given:
        raise WorklistError(f"{what} an item needs the final labels")
    if not labels:
        return dict(given)
    unknown = sorted(set(given) - set(labels))
    if unknown:
        raise WorklistError(
            f"unknown label(s) {unknown}: the item's result has labels {list(labels)}"
        )
    missing = [label for label in labels if label not in given]
    if missing:
        raise WorklistError(
            f"no value for label(s) {missing}: give each label present, absent or not assessed"
        )
    return {label: given[label] for label in labels}
