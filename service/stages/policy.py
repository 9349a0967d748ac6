"""Decision stage: AUTO_REPORT or DEFER from P(error), the defer cost and the OOD guard.

Rule: AUTO_REPORT if and only if ``P(error) <= defer cost`` and ``ood_score <= OOD threshold``;
otherwise DEFER with every reason that applies (``P_ERROR_ABOVE_COST``,
``OUT_OF_DISTRIBUTION``). A NaN P(error) or OOD score defers with the corresponding reason.

The pipeline reads a :class:`Policy` from a :class:`PolicySource` once per request. Without a
calibrated policy the source is :class:`StaticPolicySource` built by :func:`policy_from_bundle`
(the bundle's default defer cost and OOD threshold, ``policy.defer_cost`` overriding the cost).
With ``policy.file`` (``triage serve --policy FILE``, written by ``triage calibrate``) it is
:class:`FilePolicySource`: the file's cost, P(error) recalibration map and OOD threshold, with
the policy id as ``version``. A policy made for another bundle is refused at start-up.
:meth:`FilePolicySource.reload` (``triage serve`` calls it on SIGHUP) re-reads the file and
swaps the policy object atomically; a request always uses the one policy it read at its start,
so no request is dropped or sees half of each. A file that fails to load (malformed, another
bundle, cost outside the override bounds) keeps the old policy and logs an error.

Per-request costs are a privilege: a request may set its own defer cost only within
``[policy.min_defer_cost, policy.max_defer_cost]``, and the upper bound defaults to the cost in
force, so by default a client may defer more (a lower cost) but never auto-report more than the
deployment does. Raising ``policy.max_defer_cost`` above the cost in force is an explicit
choice, logged as ``defer_cost_bounds_widened`` whenever such a policy is put in force.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.bundle import Bundle
from service.config import PolicyConfig
from service.core.enums import Decision, DeferReason
from service.core.errors import PolicyOutOfBounds
from service.core.types import PolicyDecision
from triage_common.logging import get_logger
from triage_common.policy_format import (
    CalibratedPolicy,
    MonitoringReference,
    PolicyFileError,
    read_policy,
)

log = get_logger("service.policy")


def _identity(p: float) -> float:
    return p


@dataclass(frozen=True)
class Policy:
    """The defer policy in force: default cost, override bounds, OOD threshold, P(error) map."""

    defer_cost: float
    ood_threshold: float
    min_defer_cost: float = 0.0
    max_defer_cost: float | None = None  # None: the policy's own defer cost
    version: str = ""  # empty: the bundle default; a calibrated policy sets its id
    recalibrate: Callable[[float], Any] = _identity  # e.g. a calibration Recalibration map
    monitoring: MonitoringReference | None = None  # the calibration set's, for drift metrics

    @property
    def upper_bound(self) -> float:
        """The highest cost a request may set (the policy's own cost unless widened)."""
        return self.defer_cost if self.max_defer_cost is None else self.max_defer_cost

    def cost_for(self, override: float | None) -> float:
        """The cost a request gets: its override (checked against the bounds) or the default."""
        if override is None:
            return self.defer_cost
        high = self.upper_bound
        if not math.isfinite(override) or not (self.min_defer_cost <= override <= high):
            hint = (
                " (a request may lower the cost, deferring more, but not raise it above the "
                "cost in force unless policy.max_defer_cost allows it)"
                if self.max_defer_cost is None and math.isfinite(override) and override > high
                else ""
            )
            raise PolicyOutOfBounds(
                f"defer_cost {override} is outside the server's bounds "
                f"[{self.min_defer_cost}, {high}]{hint}"
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


def _within_bounds(cost: float, config: PolicyConfig) -> bool:
    high = cost if config.max_defer_cost is None else config.max_defer_cost
    return config.min_defer_cost <= cost <= high


def _bounds(config: PolicyConfig) -> str:
    high = "the cost in force" if config.max_defer_cost is None else config.max_defer_cost
    return f"[policy.min_defer_cost, policy.max_defer_cost] = [{config.min_defer_cost}, {high}]"


def _log_widening(policy: Policy) -> Policy:
    """Log when requests may raise the cost above the one in force (auto-report more)."""
    if policy.max_defer_cost is not None and policy.max_defer_cost > policy.defer_cost:
        log.warning(
            "defer_cost_bounds_widened",
            defer_cost=policy.defer_cost,
            max_defer_cost=policy.max_defer_cost,
            policy_version=policy.version,
            detail="requests may set a defer cost above the one in force and so switch "
            "deferral down (policy.max_defer_cost)",
        )
    return policy


def policy_from_bundle(bundle: Bundle, config: PolicyConfig) -> Policy:
    """The default policy: the bundle's cost (or ``policy.defer_cost``) and OOD threshold."""
    cost = bundle.defer_cost if config.defer_cost is None else config.defer_cost
    if not _within_bounds(cost, config):
        raise ValueError(
            f"the default defer cost {cost} (from "
            f"{'the bundle' if config.defer_cost is None else 'policy.defer_cost'}) lies outside "
            f"{_bounds(config)}"
        )
    return _log_widening(
        Policy(
            defer_cost=cost,
            ood_threshold=bundle.ood_threshold,
            min_defer_cost=config.min_defer_cost,
            max_defer_cost=config.max_defer_cost,
        )
    )


def policy_from_calibration(calibrated: CalibratedPolicy, config: PolicyConfig) -> Policy:
    """The policy a calibrated policy file describes, with the override bounds of ``config``."""
    if not _within_bounds(calibrated.defer_cost, config):
        raise PolicyFileError(
            f"the calibrated defer cost {calibrated.defer_cost} lies outside {_bounds(config)}"
        )
    return _log_widening(
        Policy(
            defer_cost=calibrated.defer_cost,
            ood_threshold=calibrated.ood_threshold,
            min_defer_cost=config.min_defer_cost,
            max_defer_cost=config.max_defer_cost,
            version=calibrated.policy_id,
            recalibrate=calibrated.recalibration,
            monitoring=calibrated.monitoring,
        )
    )


class FilePolicySource(StaticPolicySource):
    """The calibrated policy of a ``triage calibrate`` file; :meth:`reload` re-reads it.

    The constructor raises :class:`PolicyFileError` when the file cannot be used (missing,
    malformed, made for another bundle, cost outside the bounds): the server does not start.
    """

    def __init__(self, path: Path, bundle: Bundle, config: PolicyConfig) -> None:
        self.path = Path(path)
        self.bundle_id = bundle.bundle_id
        self.config = config
        self._reload_lock = threading.Lock()
        super().__init__(self._read())

    def _read(self) -> Policy:
        return policy_from_calibration(read_policy(self.path, self.bundle_id), self.config)

    def reload(self) -> bool:
        """Re-read the file and swap the policy in; on failure keep the old one and log why."""
        with self._reload_lock:
            old = self.current()
            try:
                new = self._read()
            except (PolicyFileError, OSError, ValueError) as exc:
                log.error(
                    "policy_reload_failed",
                    path=str(self.path),
                    error=type(exc).__name__,
                    detail=str(exc),
                    kept_policy_version=old.version,
                )
                return False
            self.replace(new)
            log.info(
                "policy_reloaded",
                path=str(self.path),
                policy_version=new.version,
                previous_policy_version=old.version,
                defer_cost=new.defer_cost,
                ood_threshold=new.ood_threshold,
            )
            return True


def policy_source(bundle: Bundle, config: PolicyConfig) -> StaticPolicySource:
    """The source ``triage serve`` uses: the policy file when ``policy.file`` is set, else the
    bundle default. Raises :class:`PolicyFileError` (file) or ``ValueError`` (bounds)."""
    if config.file:
        if config.defer_cost is not None:
            raise PolicyFileError(
                "policy.defer_cost and policy.file are both set: the calibrated policy file "
                "carries the defer cost; unset one of them"
            )
        return FilePolicySource(Path(config.file), bundle, config)
    return StaticPolicySource(policy_from_bundle(bundle, config))


def decide(p_error_raw: float, ood_score: float, policy: Policy, cost: float) -> PolicyDecision:
    """Apply the rule of the module docstring with the cost already chosen for the request."""
    p_error = float(policy.recalibrate(float(p_error_raw)))
    reasons = []
    if not p_error <= cost:  # NaN defers
        reasons.append(DeferReason.P_ERROR_ABOVE_COST)
    if not ood_score <= policy.ood_threshold:
        reasons.append(DeferReason.OUT_OF_DISTRIBUTION)
    return PolicyDecision(
        decision=Decision.DEFER if reasons else Decision.AUTO_REPORT,
        reasons=tuple(reasons),
        defer_cost=cost,
        p_error=p_error,
        p_error_raw=float(p_error_raw),
        ood_score=float(ood_score),
        ood_threshold=policy.ood_threshold,
        policy_version=policy.version,
    )
