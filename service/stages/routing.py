"""Routing stage: which worklist a triaged study goes to, and with which priority.

Rules come from the ``[routing]`` configuration: an ordered list, first match wins, a final
default rule required. A rule matches on the decision, defer reasons, findings present,
probability thresholds, and the site / calling AE title / modality; it yields a worklist and a
priority. After the first match, configured critical findings raise the priority to their floor
(STAT by default): triage may raise a priority, never lower one.

Shipped defaults (:data:`DEFAULT_RULES`):

1. a critical finding (Pneumothorax) predicted present -> ``radiologist`` STAT (even if deferred)
2. deferred -> ``radiologist`` ROUTINE
3. auto-reported with findings -> ``radiologist-confirm`` ROUTINE
4. default (auto-reported normal) -> ``ai-normal`` ROUTINE

Priorities map to DICOM UPS Scheduled Procedure Step Priority (HIGH / MEDIUM / LOW) and FHIR
Task.priority (stat / urgent / routine) where exported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.core.enums import Decision, DeferReason, Priority

#: Router: the routing input of a result -> (worklist name, priority).
Router = Callable[["RoutingInput"], tuple[str, Priority]]


@dataclass(frozen=True)
class RoutingInput:
    """What routing may look at: plain values taken from a triage result."""

    decision: Decision
    defer_reasons: frozenset[DeferReason] = frozenset()
    findings_present: frozenset[str] = frozenset()
    probabilities: Mapping[str, float] = field(default_factory=dict)
    site: str = ""
    calling_ae_title: str = ""
    modality: str = ""


@dataclass(frozen=True)
class Rule:
    """One routing rule; an empty condition matches anything."""

    name: str
    worklist: str
    priority: Priority
    decision: Decision | None = None
    defer_reasons_any: frozenset[DeferReason] = frozenset()
    findings_any: frozenset[str] = frozenset()
    has_findings: bool | None = None
    min_probability: Mapping[str, float] = field(default_factory=dict)
    sites: frozenset[str] = frozenset()
    calling_ae_titles: frozenset[str] = frozenset()
    modalities: frozenset[str] = frozenset()

    @property
    def is_default(self) -> bool:
        """True when the rule has no condition at all."""
        return (
            self.decision is None
            and not self.defer_reasons_any
            and not self.findings_any
            and self.has_findings is None
            and not self.min_probability
            and not self.sites
            and not self.calling_ae_titles
            and not self.modalities
        )

    def matches(self, item: RoutingInput) -> bool:
        """Whether every condition of the rule holds for ``item``."""
        checks = (
            self.decision is None or item.decision == self.decision,
            not self.defer_reasons_any or bool(self.defer_reasons_any & item.defer_reasons),
            not self.findings_any or bool(self.findings_any & item.findings_present),
            self.has_findings is None or self.has_findings == bool(item.findings_present),
            all(item.probabilities.get(k, 0.0) >= v for k, v in self.min_probability.items()),
            not self.sites or item.site in self.sites,
            not self.calling_ae_titles or item.calling_ae_title in self.calling_ae_titles,
            not self.modalities or item.modality in self.modalities,
        )
        return all(checks)


@dataclass(frozen=True)
class RoutingTable:
    """Ordered rules plus the critical-finding priority floors."""

    rules: tuple[Rule, ...]
    critical: Mapping[str, Priority] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rules or not self.rules[-1].is_default:
            raise ValueError("routing: the last rule must be a default rule with no conditions")

    def route(self, item: RoutingInput) -> tuple[str, Priority, str]:
        """(worklist, priority, rule name) of the first matching rule, priority raised by floors."""
        rule = next(r for r in self.rules if r.matches(item))
        floors = [p for label, p in self.critical.items() if label in item.findings_present]
        return rule.worklist, max([rule.priority, *floors]), rule.name


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        "critical-finding", "radiologist", Priority.STAT, findings_any=frozenset({"Pneumothorax"})
    ),
    Rule("deferred", "radiologist", Priority.ROUTINE, decision=Decision.DEFER),
    Rule(
        "auto-with-findings",
        "radiologist-confirm",
        Priority.ROUTINE,
        Decision.AUTO_REPORT,
        has_findings=True,
    ),
    Rule("auto-normal", "ai-normal", Priority.ROUTINE),
)
DEFAULT_TABLE = RoutingTable(DEFAULT_RULES, {"Pneumothorax": Priority.STAT})

_RULE_KEYS = {
    "name", "worklist", "priority", "decision", "defer_reasons_any", "findings_any",
    "has_findings", "min_probability", "sites", "calling_ae_titles", "modalities",
}  # fmt: skip


def _strings(where: str, key: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: '{key}' must be a list of strings")
    return frozenset(value)


def _priority(where: str, value: Any) -> Priority:
    try:
        return Priority[str(value).upper()]
    except KeyError:
        raise ValueError(
            f"{where}: priority {value!r} is not one of STAT, URGENT, ROUTINE"
        ) from None


def parse_rule(position: int, data: Mapping[str, Any], labels: Sequence[str] | None) -> Rule:
    """One rule from configuration; errors name the rule's position and what is wrong."""
    where = f"routing rule {position} ({data.get('name', 'unnamed')!r})"
    unknown = sorted(set(data) - _RULE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}")
    if not isinstance(data.get("worklist"), str) or not data["worklist"]:
        raise ValueError(f"{where}: 'worklist' (a non-empty string) is required")
    raw_decision = data.get("decision")
    if raw_decision is not None and raw_decision not in Decision.__members__:
        raise ValueError(
            f"{where}: decision {raw_decision!r} is not one of {list(Decision.__members__)}"
        )
    decision = None if raw_decision is None else Decision[raw_decision]
    names = _strings(where, "defer_reasons_any", data.get("defer_reasons_any", []))
    unknown_reasons = sorted(names - set(DeferReason.__members__))
    if unknown_reasons:
        raise ValueError(f"{where}: unknown defer reason(s) {unknown_reasons}")
    reasons = frozenset(DeferReason[name] for name in names)
    findings = _strings(where, "findings_any", data.get("findings_any", []))
    thresholds = data.get("min_probability", {})
    if not isinstance(thresholds, Mapping) or not all(
        isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in thresholds.values()
    ):
        raise ValueError(f"{where}: 'min_probability' must map labels to numbers in [0, 1]")
    named = findings | set(thresholds)
    if labels is not None and named - set(labels):
        raise ValueError(f"{where}: unknown finding(s) {sorted(named - set(labels))}")
    has_findings = data.get("has_findings")
    if has_findings is not None and not isinstance(has_findings, bool):
        raise ValueError(f"{where}: 'has_findings' must be true or false")
    return Rule(
        name=str(data.get("name", f"rule-{position}")),
        worklist=data["worklist"],
        priority=_priority(where, data.get("priority", "ROUTINE")),
        decision=decision,
        defer_reasons_any=reasons,
        findings_any=findings,
        has_findings=has_findings,
        min_probability={str(k): float(v) for k, v in thresholds.items()},
        sites=_strings(where, "sites", data.get("sites", [])),
        calling_ae_titles=_strings(where, "calling_ae_titles", data.get("calling_ae_titles", [])),
        modalities=_strings(where, "modalities", data.get("modalities", [])),
    )


def parse_routing(data: Mapping[str, Any], labels: Sequence[str] | None = None) -> RoutingTable:
    """The ``[routing]`` configuration table (``rules`` list and ``critical_findings``)."""
    unknown = sorted(set(data) - {"rules", "critical_findings", "critical_priority"})
    if unknown:
        raise ValueError(f"routing: unknown key(s) {unknown}")
    raw_rules = data.get("rules")
    rules = (
        DEFAULT_RULES
        if raw_rules is None
        else tuple(parse_rule(i, r, labels) for i, r in enumerate(raw_rules, start=1))
    )
    if rules and not rules[-1].is_default:
        raise ValueError(
            f"routing rule {len(rules)} ({rules[-1].name!r}): the last rule must be a default "
            "rule with no conditions, so that every result matches some rule"
        )
    critical = _strings(
        "routing", "critical_findings", data.get("critical_findings", ["Pneumothorax"])
    )
    if labels is not None and critical - set(labels):
        raise ValueError(f"routing: unknown critical finding(s) {sorted(critical - set(labels))}")
    floor = _priority("routing", data.get("critical_priority", "STAT"))
    return RoutingTable(rules, {label: floor for label in sorted(critical)})


def make_router(table: RoutingTable) -> Router:
    """A router applying ``table``: (worklist name, priority)."""

    def router(item: RoutingInput) -> tuple[str, Priority]:
        worklist, priority, _ = table.route(item)
        return worklist, priority

    return router


#: The router of the shipped defaults.
route: Router = make_router(DEFAULT_TABLE)
