"""What a Triage call returns, logs and counts once the worklist is involved: the result and
the log line agree on replays, per-request costs are bounded by the deployment's, and the
result and the audit name who set the cost and who sent the study."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from service._proto.triage.v1 import triage_pb2, worklist_pb2
from tests.helpers.dicom_factory import chest
from tests.helpers.servers import FakeModel, ServerFactory, worklist_stubs


class SettableModel(FakeModel):
    """A fake model whose P(error) the test sets between calls."""

    def __init__(self) -> None:
        super().__init__()
        self.p_error = 0.1
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The fake outputs with the P(error) set now."""
        out = super().run(batch)
        with self._lock:
            out["p_error"] = np.full(batch.shape[0], self.p_error, np.float32)
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _request_lines(err: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "triage_request"]


def test_replay_is_logged_and_counted_as_what_was_returned(
    server_factory: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replayed result is logged and counted with its stored decision, even when the fresh
    computation of the resend would have decided otherwise."""
    model = SettableModel()
    server, port = server_factory(
        model=model,
        **{"worklist.path": str(tmp_path / "w.db"), "metrics.port": _free_port()},
    )
    triage, _ = worklist_stubs(port)
    data = chest()
    capsys.readouterr()
    first = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    model.p_error = 0.9  # the resend computes DEFER, but the same inputs replay AUTO_REPORT
    again = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    assert first.decision == again.decision == triage_pb2.AUTO_REPORT and again.replayed
    logged = _request_lines(capsys.readouterr().err)
    assert [line["decision"] for line in logged] == ["AUTO_REPORT", "AUTO_REPORT"]
    assert logged[1]["p_error"] == pytest.approx(first.p_error, abs=1e-6)  # rounded to 6 places
    assert "replayed stored result" in logged[1]["notes"]
    registry = server.metrics.registry
    labels = {"rpc": "Triage", "status": "OK"}
    assert (
        registry.get_sample_value("triage_requests_total", {**labels, "decision": "AUTO_REPORT"})
        == 2
    )
    assert (
        registry.get_sample_value("triage_requests_total", {**labels, "decision": "DEFER"}) is None
    )


def test_a_resend_with_another_cost_is_decided_with_that_cost(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Cost 0.99 then 0.01 for one study: the second reply applies 0.01 (DEFER), not the stored
    AUTO_REPORT; sending 0.01 again replays it."""
    overrides = {"worklist.path": str(tmp_path / "w.db"), "policy.max_defer_cost": 0.99}
    _, port = server_factory(model=FakeModel(), **overrides)
    triage, worklist = worklist_stubs(port)
    data = chest()

    def send(cost: float) -> triage_pb2.TriageResult:
        request = triage_pb2.TriageRequest(instances=[data], defer_cost=cost)
        reply: triage_pb2.TriageResult = triage.Triage(request, timeout=30)
        return reply

    auto, deferred, again = send(0.99), send(0.01), send(0.01)
    assert auto.decision == triage_pb2.AUTO_REPORT and not auto.replayed
    assert deferred.decision == triage_pb2.DEFER and not deferred.replayed
    assert deferred.defer_cost == pytest.approx(0.01, rel=1e-12)  # the double sent, echoed
    assert again.replayed and again.worklist_item_id == deferred.worklist_item_id
    history = worklist.History(worklist_pb2.HistoryRequest(item_id=auto.worklist_item_id)).events
    later = worklist.History(worklist_pb2.HistoryRequest(item_id=deferred.worklist_item_id)).events
    details = " ".join(e.detail for e in (*history, *later))
    assert "AUTO_REPORT at cost 0.99 set by request" in details
    assert "DEFER at cost 0.01 set by request" in details


def test_default_bounds_let_a_client_defer_more_but_never_less(
    server_factory: ServerFactory,
) -> None:
    """Without configuration a request may lower the cost (defer more) but not raise it above
    the deployment's; the result says who set the cost and who sent the study."""
    _, port = server_factory(model=FakeModel())
    triage, _ = worklist_stubs(port)
    with pytest.raises(grpc.RpcError) as refused:
        triage.Triage(triage_pb2.TriageRequest(instances=[chest()], defer_cost=0.99), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bounds [0.0, 0.2]" in refused.value.details()
    assert "policy.max_defer_cost" in refused.value.details()
    lower = triage.Triage(
        triage_pb2.TriageRequest(instances=[chest()], defer_cost=0.05, calling_ae_title="PACS1"),
        timeout=30,
    )
    assert lower.defer_cost == pytest.approx(0.05, rel=1e-12)  # the double sent, echoed
    assert lower.defer_cost_set_by == "request"
    assert lower.caller == "peer:127.0.0.1 ae:PACS1"
    default = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    assert default.defer_cost_set_by == "deployment" and default.caller == "peer:127.0.0.1"


def test_the_audit_names_the_token_holder_who_set_the_cost(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """With named bearer tokens the result and the audit record which holder sent the cost."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# holder token\npacs-east 3b1f0c9e2d\nunnamed-token-value\n")
    _, port = server_factory(
        model=FakeModel(),
        **{"worklist.path": str(tmp_path / "w.db"), "security.tokens_file": str(tokens)},
    )
    triage, worklist = worklist_stubs(port)
    east = [("authorization", "Bearer 3b1f0c9e2d")]
    reply = triage.Triage(
        triage_pb2.TriageRequest(instances=[chest()], defer_cost=0.1), timeout=30, metadata=east
    )
    assert (reply.caller, reply.defer_cost_set_by) == ("token:pacs-east", "request")
    (queued,) = worklist.History(
        worklist_pb2.HistoryRequest(item_id=reply.worklist_item_id), metadata=east
    ).events
    assert "set by request" in queued.detail and "sent by token:pacs-east" in queued.detail
    anonymous = triage.Triage(
        triage_pb2.TriageRequest(instances=[chest()]),
        timeout=30,
        metadata=[("authorization", "Bearer unnamed-token-value")],
    )
    assert anonymous.caller.startswith("token:#") and len(anonymous.caller) == len("token:#") + 8
    assert "unnamed-token-value" not in anonymous.caller
