"""``triage worklist``: claim, complete and export over gRPC, the labelled export included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service._proto.triage.v1 import triage_pb2
from tests.helpers.dicom_factory import chest
from tests.helpers.servers import WorklistServerFactory, worklist_stubs
from triage_tools.cli import main


def test_labelled_export_feeds_calibration(
    worklist_server: WorklistServerFactory, tmp_path: Path
) -> None:
    """`worklist complete` then `export --labelled` writes model outputs with final labels."""
    _, port = worklist_server()
    triage, _ = worklist_stubs(port)
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
    assert line["p_error_raw"] == pytest.approx(reply.p_error_raw, rel=1e-6)
    assert line["labels"] == [f.label for f in reply.findings]
    assert set(line["final_labels"]) == set(line["labels"])
    assert reply.study_instance_uid not in out.read_text()  # only hashed
