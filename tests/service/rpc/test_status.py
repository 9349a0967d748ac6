"""The status table: which gRPC code each service error becomes, and what the client is told."""

from __future__ import annotations

import grpc

from service.core.errors import NotEligible, Overloaded
from service.rpc.status import STATUS_TABLE, status_for


def test_status_table() -> None:
    """Every table entry maps to its code; unknown exceptions become INTERNAL without their text."""
    assert status_for(NotEligible("x")) == (grpc.StatusCode.FAILED_PRECONDITION, "x")
    assert status_for(Overloaded("y"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, message = status_for(KeyError("Zyxwquux^Patient"))
    assert code == grpc.StatusCode.INTERNAL and "Zyxwquux" not in message
    assert len({kind for kind, _ in STATUS_TABLE}) == len(STATUS_TABLE)
