"""``triage worklist``: claim, complete, amend, history, watch and export over gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service._proto.triage.v1 import triage_pb2
from tests.helpers.dicom_factory import chest
from tests.helpers.servers import WorklistServerFactory, worklist_stubs
from triage_tools.cli import main


def _triaged(port: int) -> triage_pb2.TriageResult:
    triage, _ = worklist_stubs(port)
    reply: triage_pb2.TriageResult = triage.Triage(
        triage_pb2.TriageRequest(instances=[chest()]), timeout=30
    )
    return reply


def test_labelled_export_feeds_calibration(
    worklist_server: WorklistServerFactory, tmp_path: Path
) -> None:
    """`worklist complete` then `export --labelled` writes model outputs with final labels."""
    _, port = worklist_server()
    reply = _triaged(port)
    server = ["--server", f"127.0.0.1:{port}"]
    item = ["--item", reply.worklist_item_id]
    assert main(["worklist", *server, "claim", "--reader", "dr-a", *item]) == 0
    labels = [f"--label={f.label}={int(f.present)}" for f in reply.findings[1:]]
    not_assessed = ["--not-assessed", reply.findings[0].label]
    command = ["worklist", *server, "complete", "--reader", "dr-a", *item]
    assert main([*command, *labels, *not_assessed]) == 0
    table = tmp_path / "items.json"
    assert main(["worklist", *server, "export", "--format", "json", "--out", str(table)]) == 0
    (record,) = json.loads(table.read_text())
    assert record["priority_dicom_ups"] in ("LOW", "MEDIUM", "HIGH")
    assert record["priority_fhir_task"] in ("routine", "urgent", "stat")
    assert record["final_labels"].startswith(f"{reply.findings[0].label}=n/a;")
    out = tmp_path / "reads.jsonl"
    assert main(["worklist", *server, "export", "--labelled", "--out", str(out)]) == 0
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["bundle_id"] == reply.model_version
    assert line["p_error_raw"] == pytest.approx(reply.p_error_raw, rel=1e-6)
    assert line["labels"] == [f.label for f in reply.findings]
    assert set(line["final_labels"]) == set(line["labels"])
    assert line["final_labels"][reply.findings[0].label] is None  # not assessed: unknown
    assert reply.study_instance_uid not in out.read_text()  # only hashed


def test_complete_refuses_unknown_labels_and_amend_corrects(
    worklist_server: WorklistServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown label is refused naming it (nothing stored); amend then history show the fix."""
    _, port = worklist_server()
    reply = _triaged(port)
    server = ["--server", f"127.0.0.1:{port}"]
    item = ["--item", reply.worklist_item_id]
    assert main(["worklist", *server, "claim", "--reader", "dr-a", *item]) == 0
    everything = [f"--label={f.label}=0" for f in reply.findings]
    complete = ["worklist", *server, "complete", "--reader", "dr-a", *item]
    capsys.readouterr()
    assert main([*complete, *everything, "--label", "Bogus=1"]) == 1
    assert "INVALID_ARGUMENT: unknown label(s) ['Bogus']" in capsys.readouterr().err
    assert main([*complete]) == 2
    assert "give --label NAME=0|1 or --not-assessed NAME" in capsys.readouterr().err
    assert main([*complete, *everything]) == 0
    amend = ["worklist", *server, "amend", "--reader", "dr-a", *item, "--reason", "second look"]
    assert main([*amend, *everything[:-1], f"--label={reply.findings[-1].label}=1"]) == 0
    capsys.readouterr()
    assert main(["worklist", *server, "history", reply.worklist_item_id, "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [(e["kind"], e["state"]) for e in events] == [
        ("queued", "QUEUED"),
        ("claimed", "CLAIMED"),
        ("completed", "COMPLETED"),
        ("amended", "COMPLETED"),
    ]
    assert "second look" in events[-1]["detail"] and events[-1]["actor"] == "dr-a"


def test_watch_prints_events_and_resumes_after_a_sequence_number(
    worklist_server: WorklistServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`worklist watch --after 0 --count N` prints the first N events; --after SEQ the rest."""
    _, port = worklist_server()
    reply = _triaged(port)
    server = ["--server", f"127.0.0.1:{port}"]
    main(["worklist", *server, "claim", "--reader", "dr-a", "--item", reply.worklist_item_id])
    capsys.readouterr()
    watch = ["worklist", *server, "watch", "--json"]
    assert main([*watch, "--after", "0", "--count", "1"]) == 0
    (first,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (first["kind"], first["state"], first["item_id"]) == (
        "queued",
        "QUEUED",
        reply.worklist_item_id,
    )
    assert main([*watch, "--after", str(first["seq"]), "--count", "1"]) == 0
    (second,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (second["kind"], second["state"], second["claimed_by"]) == ("claimed", "CLAIMED", "dr-a")
    assert second["seq"] == first["seq"] + 1
    assert main([*watch, "--after", "-1"]) == 2
