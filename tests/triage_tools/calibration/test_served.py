"""The served runner: same outputs as the gRPC server for the same files; refusals skipped."""

from __future__ import annotations

import csv
from pathlib import Path

import grpc
import numpy as np
import pytest

from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc
from service.bundle import load_bundle
from service.config import load_config
from service.rpc.server import create_server
from triage_common.datasets import load_dataset
from triage_tools.calibration.served import ServedOptions, run_served


def test_labelled_phantoms_keep_frontal_rows_and_reported_labels(tiny_phantoms: Path) -> None:
    """The phantom reader keeps frontal images only and takes the reported labels as truth."""
    labels = ("Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax")
    data = load_dataset(tiny_phantoms, labels)
    with (tiny_phantoms / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["view"] in ("PA", "AP")]
    assert len(data) == len(rows) == 40
    reported = np.array([[float(r[n]) for n in labels] for r in rows])
    assert np.array_equal(data.labels, reported)
    assert data.heldout_sites and set(data.sites) >= set(data.heldout_sites)


def test_served_runner_matches_the_grpc_server(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path
) -> None:
    """Probabilities, raw P(error) and OOD score equal the server's for every phantom file."""
    bundle = load_bundle(phantom_bundle)
    data = load_dataset(tiny_phantoms, bundle.labels)
    run = run_served(bundle, data, ServedOptions(batch_size=7, progress=False))
    assert not run.skipped and len(run.cal) == len(data)
    overrides = {"bundle": str(phantom_bundle), "server.port": 0}
    overrides["worklist.path"] = str(tmp_path / "worklist.db")  # not the working directory
    config = load_config(None, env={}, overrides=overrides)
    server, port = create_server(config)
    server.start(wait_ready=True, timeout=60)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = triage_pb2_grpc.TriageStub(channel)
            for i, path in enumerate(data.paths):
                result = stub.Triage(triage_pb2.TriageRequest(instances=[path.read_bytes()]))
                served = [f.probability for f in result.findings]
                assert served == pytest.approx(run.cal.probabilities[i].tolist(), abs=1e-6)
                assert result.p_error_raw == pytest.approx(run.cal.p_error_raw[i], abs=1e-6)
                assert result.ood_score == pytest.approx(run.cal.ood_score[i], rel=1e-5)
                assert result.sop_instance_uid == run.cal.sop_uids[i]
    finally:
        server.stop(0).wait(10)


def test_files_the_service_refuses_are_skipped_with_reasons(
    tiny_phantoms: Path, phantom_bundle: Path, tmp_path: Path
) -> None:
    """A lateral-only file and a non-DICOM file are skipped, counted and explained."""
    bundle = load_bundle(phantom_bundle)
    with (tiny_phantoms / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    frontal = next(r for r in rows if r["view"] == "PA")
    lateral = next(r for r in rows if r["view"] == "LL")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file" * 20)
    names = ",".join(bundle.labels)
    lines = [f"path,patient_id,{names}"]
    for path, patient in (
        (str(tiny_phantoms / frontal["path"]), "p1"),
        (str(tiny_phantoms / lateral["path"]), "p2"),
        (str(tmp_path / "junk.dcm"), "p3"),
    ):
        lines.append(f"{path},{patient},1,0,,-1")
    (tmp_path / "set.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset(tmp_path / "set.csv", bundle.labels)
    assert data.labels[0].tolist()[:3] == [1.0, 0.0, 0.0] and np.isnan(data.labels[0, 3])
    run = run_served(bundle, data, ServedOptions(progress=False))
    assert len(run.cal) == 1 and run.cal.patient_ids == ("p1",)
    reasons = run.skipped_reasons()
    assert sum(reasons.values()) == 2
    assert any(r.startswith("NotEligible") for r in reasons)
    assert any(r.startswith("InvalidStudy") for r in reasons)
