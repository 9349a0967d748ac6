"""Routing stage: which worklist a triaged study goes to, and with which priority.

The rules themselves (ordered, first match wins, a final default required, critical-finding
priority floors) live in :mod:`service.worklist.rules` and come from the ``[routing]``
configuration; this module adapts a triage result to them. ``route`` uses the shipped defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from service.worklist.rules import DEFAULT_TABLE, RoutingInput, RoutingTable


class RoutableFinding(Protocol):
    """A finding as routing sees it."""

    @property
    def label(self) -> str: ...

    @property
    def present(self) -> bool: ...


class Routable(Protocol):
    """A triage result as routing sees it (other attributes are read when present)."""

    @property
    def decision(self) -> str: ...

    @property
    def findings(self) -> Sequence[RoutableFinding]: ...


Router = Callable[[Routable], tuple[str, str]]


def routing_input(result: Routable) -> RoutingInput:
    """The plain values routing rules match on."""
    return RoutingInput(
        decision=result.decision,
        defer_reasons=frozenset(getattr(result, "defer_reasons", ())),
        findings_present=frozenset(f.label for f in result.findings if f.present),
        probabilities={f.label: float(getattr(f, "probability", 0.0)) for f in result.findings},
        site=str(getattr(result, "site", "")),
        calling_ae_title=str(getattr(result, "calling_ae_title", "")),
        modality=str(getattr(result, "modality", "")),
    )


def make_router(table: RoutingTable) -> Router:
    """A router applying ``table`` (worklist name, priority name)."""

    def router(result: Routable) -> tuple[str, str]:
        worklist, priority, _ = table.route(routing_input(result))
        return worklist, priority.name

    return router


route: Router = make_router(DEFAULT_TABLE)
