"""Routing rules: first match wins, shipped defaults, priorities never lowered, bad rules named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.enums import Decision, DeferReason, Priority
from service.stages.routing import (
    DEFAULT_TABLE,
    RoutingInput,
    RoutingTable,
    Rule,
    parse_routing,
    route,
)

LABELS = ("Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax")


def test_shipped_defaults_route_as_documented() -> None:
    """Deferred -> radiologist, pneumothorax -> STAT, findings -> confirm, normal -> ai-normal."""
    route = DEFAULT_TABLE.route
    assert route(RoutingInput(Decision.DEFER, frozenset({DeferReason.P_ERROR_ABOVE_COST})))[:2] == (
        "radiologist",
        Priority.ROUTINE,
    )
    assert route(RoutingInput(Decision.DEFER, findings_present=frozenset({"Pneumothorax"})))[
        :2
    ] == (
        "radiologist",
        Priority.STAT,
    )
    assert route(RoutingInput(Decision.AUTO_REPORT, findings_present=frozenset({"Edema"})))[:2] == (
        "radiologist-confirm",
        Priority.ROUTINE,
    )
    assert route(RoutingInput(Decision.AUTO_REPORT))[:2] == ("ai-normal", Priority.ROUTINE)


def test_routing_defaults() -> None:
    """Issue-6 defaults: critical first (STAT even if deferred), deferred, confirm, ai-normal."""
    auto, defer = Decision.AUTO_REPORT, Decision.DEFER
    none: frozenset[str] = frozenset()
    edema, ptx = frozenset({"Edema"}), frozenset({"Pneumothorax"})
    assert route(RoutingInput(defer, findings_present=ptx)) == ("radiologist", Priority.STAT)
    assert route(RoutingInput(auto, findings_present=ptx)) == ("radiologist", Priority.STAT)
    assert route(RoutingInput(defer, findings_present=none)) == ("radiologist", Priority.ROUTINE)
    assert route(RoutingInput(auto, findings_present=edema)) == (
        "radiologist-confirm",
        Priority.ROUTINE,
    )
    assert route(RoutingInput(auto, findings_present=none)) == ("ai-normal", Priority.ROUTINE)


def test_first_match_wins() -> None:
    """When two rules match, the earlier one decides the worklist."""
    table = RoutingTable(
        (
            Rule("site-a", "site-a-list", Priority.URGENT, sites=frozenset({"A"})),
            Rule("deferred", "radiologist", Priority.ROUTINE, decision=Decision.DEFER),
            Rule("default", "ai-normal", Priority.ROUTINE),
        )
    )
    assert table.route(RoutingInput(Decision.DEFER, site="A"))[0] == "site-a-list"
    assert table.route(RoutingInput(Decision.DEFER, site="B"))[0] == "radiologist"


def test_probability_threshold_condition() -> None:
    """A min_probability condition matches only at or above the threshold."""
    table = parse_routing(
        {
            "rules": [
                {
                    "name": "big-heart",
                    "worklist": "cardio",
                    "min_probability": {"Cardiomegaly": 0.8},
                },
                {"name": "default", "worklist": "ai-normal"},
            ]
        },
        LABELS,
    )
    assert (
        table.route(RoutingInput(Decision.AUTO_REPORT, probabilities={"Cardiomegaly": 0.85}))[0]
        == "cardio"
    )
    assert (
        table.route(RoutingInput(Decision.AUTO_REPORT, probabilities={"Cardiomegaly": 0.5}))[0]
        == "ai-normal"
    )


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [{"name": "x", "worklist": "w", "fnidings_any": ["Edema"]}],
            r"rule 1 \('x'\): unknown key",
        ),
        ([{"name": "x", "priority": "STAT"}], r"rule 1 \('x'\): 'worklist'"),
        ([{"worklist": "w", "priority": "SOON"}], "priority 'SOON'"),
        ([{"worklist": "w", "findings_any": ["Fracture"]}, {"worklist": "d"}], "unknown finding"),
        ([{"worklist": "w", "decision": "DEFER"}], r"rule 1 .*last rule must be a default"),
        ([{"worklist": "w", "defer_reasons_any": ["TIRED"]}, {"worklist": "d"}], "defer reason"),
    ],
)
def test_bad_rule_is_reported_with_position(rules: list[dict[str, object]], message: str) -> None:
    """A bad rule is refused at start-up with its position and what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_routing({"rules": rules}, LABELS)


routing_inputs = st.builds(
    RoutingInput,
    decision=st.sampled_from(Decision),
    defer_reasons=st.frozensets(st.sampled_from(DeferReason)),
    findings_present=st.frozensets(st.sampled_from(LABELS)),
    probabilities=st.dictionaries(st.sampled_from(LABELS), st.floats(0, 1)),
    site=st.sampled_from(["", "A", "B"]),
    calling_ae_title=st.sampled_from(["", "PACS1"]),
    modality=st.sampled_from(["CR", "DX"]),
)

conditional_rules = st.builds(
    Rule,
    name=st.just("r"),
    worklist=st.sampled_from(["w1", "w2", "w3"]),
    priority=st.sampled_from(list(Priority)),
    decision=st.none() | st.sampled_from(Decision),
    findings_any=st.frozensets(st.sampled_from(LABELS), max_size=2),
    sites=st.frozensets(st.sampled_from(["A", "B"]), max_size=1),
)


@given(
    item=routing_inputs,
    rules=st.lists(conditional_rules, max_size=5),
    default_priority=st.sampled_from(list(Priority)),
    critical=st.frozensets(st.sampled_from(LABELS), max_size=2),
)
def test_every_result_matches_and_priority_is_never_lowered(
    item: RoutingInput,
    rules: list[Rule],
    default_priority: Priority,
    critical: frozenset[str],
) -> None:
    """Any result under any valid rule list is routed, at no less than its rule's priority and
    at STAT when a critical finding is present."""
    table = RoutingTable(
        (*rules, Rule("default", "fallback", default_priority)),
        {label: Priority.STAT for label in critical},
    )
    worklist, priority, name = table.route(item)
    first = next(r for r in table.rules if r.matches(item))
    assert (worklist, name) == (first.worklist, first.name)
    assert priority >= first.priority
    if critical & item.findings_present:
        assert priority == Priority.STAT


def test_priority_maps_to_ups_and_fhir() -> None:
    """Priorities export as DICOM UPS and FHIR Task priorities."""
    assert (Priority.STAT.ups, Priority.STAT.fhir) == ("HIGH", "stat")
    assert (Priority.ROUTINE.ups, Priority.ROUTINE.fhir) == ("LOW", "routine")
