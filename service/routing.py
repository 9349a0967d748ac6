"""Routing stage: which worklist a triaged study goes to, and with which priority.

Interface: ``route(result) -> (worklist, priority)`` where ``result`` is anything with a
``decision`` (``"AUTO_REPORT"``/``"DEFER"``) and ``findings`` (each with ``label`` and
``present``); priorities are ``"ROUTINE"``, ``"URGENT"``, ``"STAT"``. The pipeline takes a
:data:`Router` (this function by default), so the configured rules of the worklist issue
(#6) replace the rule source without touching the pipeline.

The rules here are the issue-6 defaults, as data, first match wins:

1. a critical finding (Pneumothorax) predicted present -> ``radiologist`` STAT, even when the
   study is deferred (triage may raise a priority, never lower one);
2. deferred -> ``radiologist`` ROUTINE;
3. auto-reported with findings present -> ``radiologist-confirm`` ROUTINE;
4. otherwise (auto-reported normal) -> ``ai-normal`` ROUTINE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from triage_common.labels import PNEUMOTHORAX

ROUTINE = "ROUTINE"
URGENT = "URGENT"
STAT = "STAT"
PRIORITIES = (ROUTINE, URGENT, STAT)


class RoutableFinding(Protocol):
    """A finding as routing sees it."""

    @property
    def label(self) -> str: ...

    @property
    def present(self) -> bool: ...


class Routable(Protocol):
    """A triage result as routing sees it."""

    @property
    def decision(self) -> str: ...

    @property
    def findings(self) -> Sequence[RoutableFinding]: ...


@dataclass(frozen=True)
class Rule:
    """A default rule: conditions (None: any) and where it sends the study."""

    name: str
    worklist: str
    priority: str
    decision: str | None = None
    any_present: frozenset[str] | None = None  # one of these labels present
    has_findings: bool | None = None


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("critical-finding", "radiologist", STAT, any_present=frozenset({PNEUMOTHORAX})),
    Rule("deferred", "radiologist", ROUTINE, decision="DEFER"),
    Rule(
        "auto-with-findings",
        "radiologist-confirm",
        ROUTINE,
        decision="AUTO_REPORT",
        has_findings=True,
    ),
    Rule("auto-normal", "ai-normal", ROUTINE),
)

Router = Callable[[Routable], tuple[str, str]]


def _matches(rule: Rule, result: Routable) -> bool:
    present = {f.label for f in result.findings if f.present}
    if rule.decision is not None and result.decision != rule.decision:
        return False
    if rule.any_present is not None and not (present & rule.any_present):
        return False
    return rule.has_findings is None or bool(present) == rule.has_findings


def route(result: Routable, rules: Sequence[Rule] = DEFAULT_RULES) -> tuple[str, str]:
    """(worklist, priority) from the first matching rule."""
    for rule in rules:
        if _matches(rule, result):
            return rule.worklist, rule.priority
    raise ValueError("no routing rule matched: the rule list needs a final default rule")
