"""The committed gRPC stubs match the .proto contract."""

from __future__ import annotations

from pathlib import Path

from service._proto.triage.v1 import triage_pb2
from triage_tools import protogen


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    """Regenerating the stubs from protos/ reproduces the committed files byte for byte."""
    fresh = protogen.generate(tmp_path)
    committed_root = protogen.ROOT
    stale = [
        str(p.relative_to(tmp_path))
        for p in fresh
        if (committed_root / p.relative_to(tmp_path)).read_bytes() != p.read_bytes()
    ]
    committed = {
        p.relative_to(committed_root)
        for p in (committed_root / protogen.PACKAGE_DIR).rglob("*.py*")
    }
    generated = {p.relative_to(tmp_path) for p in fresh}
    assert not stale, f"stale stubs (run python -m triage_tools.protogen): {stale}"
    assert committed == generated


def test_design_contract_field_numbers() -> None:
    """TriageResult keeps the field numbers DESIGN.md fixes for PACS integrations."""
    fields = {f.name: f.number for f in triage_pb2.TriageResult.DESCRIPTOR.fields}
    assert {
        "study_instance_uid": 1,
        "decision": 2,
        "p_error": 3,
        "defer_cost": 4,
        "findings": 5,
        "worklist": 6,
        "model_version": 7,
    }.items() <= fields.items()
    chunk = {f.name: f.number for f in triage_pb2.StudyChunk.DESCRIPTOR.fields}
    assert {"instance": 1, "data": 2, "defer_cost": 3}.items() <= chunk.items()
    finding = {f.name: f.number for f in triage_pb2.Finding.DESCRIPTOR.fields}
    assert {"label": 1, "probability": 2, "present": 3, "heatmap": 4}.items() <= finding.items()
