"""Decision stage: AUTO_REPORT or DEFER from P(error), the defer cost and the OOD guard.

Rule: AUTO_REPORT if and only if ``P(error) <= defer cost`` and ``ood_score <= OOD threshold``;
otherwise DEFER with every reason that applies (``P_ERROR_ABOVE_COST``,
``OUT_OF_DISTRIBUTION``). A NaN P(error) or OOD score defers with the corresponding reason.

The pipeline reads a :class:`Policy` from a :class:`PolicySource` once per request. Today the
source is :class:`StaticPolicySource` built by :func:`policy_from_bundle` (the bundle's default
defer cost and OOD threshold, ``policy.defer_cost`` overriding the cost). The calibrated policy
file (issue #7) plugs in as another :class:`PolicySource` whose ``current()`` returns a policy
with ``recalibrate`` set and a ``version``; a reload swaps the object atomically, and a request
always uses the one policy it read at its start.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from service.bundle import Bundle
from service.config import PolicyConfig
from service.errors import PolicyOutOfBounds

AUTO_REPORT = "AUTO_REPORT"
DEFER = "DEFER"
P_ERROR_ABOVE_COST = "P_ERROR_ABOVE_COST"
OUT_OF_DISTRIBUTION = "OUT_OF_DISTRIBUTION"


def _identity(p: float) -> float:
    return p


@dataclass(frozen=True)
class Policy:
    """The defer policy in force: default cost, override bounds, OOD threshold, P(error) map."""

    defer_cost: float
    ood_threshold: float
    min_defer_cost: float = 0.0
    max_defer_cost: float = 1.0
    version: str = ""  # empty: the bundle default; a calibrated policy sets its id
    recalibrate: Callable[[float], Any] = _identity  # e.g. a calibration Recalibration map

    def cost_for(self, override: float | None) -> float:
        """The cost a request gets: its override (checked against the bounds) or the default."""
        if override is None:
            return self.defer_cost
        if not math.isfinite(override) or not (
            self.min_defer_cost <= override <= self.max_defer_cost
        ):
            raise PolicyOutOfBounds(
                f"defer_cost {override} is outside the server's bounds "
                f"[{self.min_defer_cost}, {self.max_defer_cost}]"
            )
        return override


class PolicySource(Protocol):
    """Where the pipeline gets the policy for a request (swappable, e.g. reloaded on SIGHUP)."""

    def current(self) -> Policy: ...


class StaticPolicySource:
    """A policy that only changes when :meth:`replace` is called (thread-safe)."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._lock = threading.Lock()

    def current(self) -> Policy:
        """The policy in force now."""
        with self._lock:
            return self._policy

    def replace(self, policy: Policy) -> None:
        """Swap in a new policy; requests already running keep the one they read."""
        with self._lock:
            self._policy = policy


def policy_from_bundle(bundle: Bundle, config: PolicyConfig) -> Policy:
    """The default policy: the bundle's cost (or ``policy.defer_cost``) and OOD threshold."""
    cost = bundle.defer_cost if config.defer_cost is None else config.defer_cost
    if not config.min_defer_cost <= cost <= config.max_defer_cost:
        raise ValueError(
            f"the default defer cost {cost} (from "
            f"{'the bundle' if config.defer_cost is None else 'policy.defer_cost'}) lies outside "
            f"[policy.min_defer_cost, policy.max_defer_cost] = "
            f"[{config.min_defer_cost}, {config.max_defer_cost}]"
        )
    return Policy(
        defer_cost=cost,
        ood_threshold=bundle.ood_threshold,
        min_defer_cost=config.min_defer_cost,
        max_defer_cost=config.max_defer_cost,
    )


@dataclass(frozen=True)
class Decision:
    """The outcome of the decision stage."""

    decision: str  # AUTO_REPORT or DEFER
    reasons: tuple[str, ...]
    defer_cost: float
    p_error: float  # after recalibration
    p_error_raw: float
    ood_score: float
    ood_threshold: float
    policy_version: str


def decide(p_error_raw: float, ood_score: float, policy: Policy, cost: float) -> Decision:
    """Apply the rule of the module docstring with the cost already chosen for the request."""
    p_error = float(policy.recalibrate(float(p_error_raw)))
    reasons = []
    if not p_error <= cost:  # NaN defers
        reasons.append(P_ERROR_ABOVE_COST)
    if not ood_score <= policy.ood_threshold:
        reasons.append(OUT_OF_DISTRIBUTION)
    return Decision(
        decision=DEFER if reasons else AUTO_REPORT,
        reasons=tuple(reasons),
        defer_cost=cost,
        p_error=p_error,
        p_error_raw=float(p_error_raw),
        ood_score=float(ood_score),
        ood_threshold=policy.ood_threshold,
        policy_version=policy.version,
    )
