"""The core enums carry exactly the names and numbers of the gRPC enums they stand for."""

from __future__ import annotations

from enum import IntEnum

import pytest

from service._proto.triage.v1 import triage_pb2
from service.core.enums import Decision, DeferReason, Priority


@pytest.mark.parametrize(
    ("core", "wire"),
    [(Decision, triage_pb2.Decision), (DeferReason, triage_pb2.DeferReason),
     (Priority, triage_pb2.Priority)],
    ids=["Decision", "DeferReason", "Priority"],
)  # fmt: skip
def test_core_enum_matches_the_proto_enum(core: type[IntEnum], wire: object) -> None:
    """Every member has the proto's number; the proto adds only its UNSPECIFIED zero."""
    values = dict(wire.items())  # type: ignore[attr-defined]
    assert {m.name: m.value for m in core} == {k: v for k, v in values.items() if v != 0}
