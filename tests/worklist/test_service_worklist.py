"""The worklist behind the triage service: acknowledged means stored, replays, reads, restarts."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import grpc
import pytest

from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc, worklist_pb2, worklist_pb2_grpc
from tests.service.dicom_factory import chest
from tests.worklist.conftest import WorklistServerFactory
from triage_tools.cli import main


def stubs(port: int) -> tuple[triage_pb2_grpc.TriageStub, worklist_pb2_grpc.WorklistStub]:
    """Triage and Worklist stubs on one channel."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return triage_pb2_grpc.TriageStub(channel), worklist_pb2_grpc.WorklistStub(channel)


def test_result_is_on_its_worklist_when_acknowledged(
    worklist_server: WorklistServerFactory,
) -> None:
    """Every acknowledged result names its worklist item, which List then shows."""
    _, port = worklist_server()
    triage, worklist = stubs(port)
    reply = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    assert reply.worklist_item_id and reply.worklist and not reply.replayed
    items = worklist.List(worklist_pb2.ListRequest(worklist=reply.worklist), timeout=10).items
    assert [i.item_id for i in items] == [reply.worklist_item_id]
    assert items[0].result.study_instance_uid == reply.study_instance_uid
    assert items[0].priority == reply.priority


def test_same_study_same_bundle_replays(worklist_server: WorklistServerFactory) -> None:
    """Sending a study again returns the stored result, marked replayed, and adds no item."""
    _, port = worklist_server()
    triage, worklist = stubs(port)
    data = chest(study_uid="1.2.826.0.1.3680043.10.999.1")
    first = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    again = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    assert again.replayed and again.worklist_item_id == first.worklist_item_id
    assert again.p_error == first.p_error
    states = list(worklist_pb2.ItemState.values())[1:]
    assert len(worklist.List(worklist_pb2.ListRequest(states=states), timeout=10).items) == 1


def test_claim_complete_and_watch_over_grpc(worklist_server: WorklistServerFactory) -> None:
    """A reader claims and completes an item; a Watch stream sees both changes."""
    _, port = worklist_server()
    triage, worklist = stubs(port)
    events: list[str] = []
    watch = worklist.Watch(worklist_pb2.WatchRequest(), timeout=30)

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled below once the events are in
            events.extend(e.kind for e in watch)

    watcher = threading.Thread(target=follow)
    watcher.start()
    reply = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    claimed = worklist.Claim(
        worklist_pb2.ClaimRequest(worklist=reply.worklist, reader="dr-a"), timeout=10
    )
    assert claimed.item_id == reply.worklist_item_id and claimed.state == worklist_pb2.CLAIMED
    with pytest.raises(grpc.RpcError) as denied:
        worklist.Complete(
            worklist_pb2.CompleteRequest(item_id=claimed.item_id, reader="dr-b"), timeout=10
        )
    assert denied.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no final labels given
    done = worklist.Complete(
        worklist_pb2.CompleteRequest(
            item_id=claimed.item_id,
            reader="dr-a",
            final_labels=[worklist_pb2.FinalLabel(label="Edema", present=True)],
        ),
        timeout=10,
    )
    assert done.state == worklist_pb2.COMPLETED
    deadline = threading.Event()
    for _ in range(50):
        if {"queued", "claimed", "completed"} <= set(events):
            break
        deadline.wait(0.1)
    watch.cancel()
    watcher.join(10)
    assert {"queued", "claimed", "completed"} <= set(events)


def test_claiming_anothers_item_is_refused(worklist_server: WorklistServerFactory) -> None:
    """Completing an item claimed by another reader fails with FAILED_PRECONDITION."""
    _, port = worklist_server()
    triage, worklist = stubs(port)
    reply = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    worklist.Claim(worklist_pb2.ClaimRequest(item_id=reply.worklist_item_id, reader="dr-a"))
    with pytest.raises(grpc.RpcError) as denied:
        worklist.Complete(
            worklist_pb2.CompleteRequest(
                item_id=reply.worklist_item_id,
                reader="dr-b",
                final_labels=[worklist_pb2.FinalLabel(label="Edema", present=False)],
            )
        )
    assert denied.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as missing:
        worklist.Claim(worklist_pb2.ClaimRequest(item_id="no-such-item", reader="dr-a"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_worklist_survives_a_server_restart(worklist_server: WorklistServerFactory) -> None:
    """Items acknowledged before a restart are listed after it, and replays still hold."""
    server, port = worklist_server()
    triage, _ = stubs(port)
    data = chest()
    first = triage.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
    server.stop(0).wait(10)
    _, port2 = worklist_server()
    triage2, worklist2 = stubs(port2)
    assert [i.item_id for i in worklist2.List(worklist_pb2.ListRequest()).items] == [
        first.worklist_item_id
    ]
    assert triage2.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30).replayed


def test_labelled_export_feeds_calibration(
    worklist_server: WorklistServerFactory, tmp_path: Path
) -> None:
    """`worklist complete` then `export --labelled` writes model outputs with final labels."""
    _, port = worklist_server()
    triage, _ = stubs(port)
    reply = triage.Triage(triage_pb2.TriageRequest(instances=[chest()]), timeout=30)
    server = ["--server", f"127.0.0.1:{port}"]
    assert (
        main(["worklist", *server, "claim", "--reader", "dr-a", "--item", reply.worklist_item_id])
        == 0
    )
    labels = [f"--label={f.label}={int(f.present)}" for f in reply.findings]
    assert (
        main(
            [
                "worklist",
                *server,
                "complete",
                "--reader",
                "dr-a",
                "--item",
                reply.worklist_item_id,
                *labels,
            ]
        )
        == 0
    )
    table = tmp_path / "items.json"
    assert main(["worklist", *server, "export", "--format", "json", "--out", str(table)]) == 0
    (record,) = json.loads(table.read_text())
    assert record["priority_dicom_ups"] in ("LOW", "MEDIUM", "HIGH")
    assert record["priority_fhir_task"] in ("routine", "urgent", "stat")
    out = tmp_path / "reads.jsonl"
    assert main(["worklist", *server, "export", "--labelled", "--out", str(out)]) == 0
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["bundle_id"] == reply.model_version
    assert line["p_error_raw"] == pytest.approx(reply.p_error_raw)
    assert line["labels"] == [f.label for f in reply.findings]
    assert set(line["final_labels"]) == set(line["labels"])
    assert reply.study_instance_uid not in out.read_text()  # only hashed
