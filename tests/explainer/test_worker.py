"""The explainer worker against a real server: deferred items get their counterfactuals through
the worklist API, the strips reach a real DICOM destination as a Secondary Capture, and a worker
that dies or stalls neither loses nor blocks anything."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pydicom
import pytest

from explainer.core import Explainer, load_explainer
from explainer.worker import ExplainWorker, WorkerOptions
from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc, worklist_pb2
from service.worklist.explanations import EXPLAIN_DONE, EXPLAIN_PENDING, ExplanationJob
from service.worklist.store import STATES, SqliteWorklistStore
from tests.helpers.dcmtk import dciodvfy_errors, require, storescp
from tests.helpers.dicom_factory import chest
from tests.helpers.dicom_servers import destination
from tests.helpers.servers import WorklistServerFactory, worklist_stubs

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("Cardiomegaly", "Edema", "Pleural Effusion", "Pneumothorax")
EXPLAIN_ON = {"explain.enabled": True, "explain.max_findings": 2}


def defer(stub: triage_pb2_grpc.TriageStub, **attributes: Any) -> triage_pb2.TriageResult:
    """Triage a fresh chest study at defer cost 0 (so it is deferred)."""
    reply: triage_pb2.TriageResult = stub.Triage(
        triage_pb2.TriageRequest(instances=[chest(**attributes)], defer_cost=0.0), timeout=60
    )
    assert reply.decision == triage_pb2.DEFER
    return reply


@pytest.fixture(name="explainer")
def fixture_explainer(
    bundle_path: Path, bundle_classifier: Path, tiny_autoencoder: Path
) -> Explainer:
    """The test bundle's classifier with the tiny autoencoder."""
    return load_explainer(bundle_path, bundle_classifier, tiny_autoencoder)


def worker(
    server: Any,
    explainer: Explainer,
    after_explain: Callable[[ExplanationJob], None] | None = None,
    **options: Any,
) -> ExplainWorker:
    """A worker on the server's own worklist file (``after_explain``: runs inside each job)."""
    store = SqliteWorklistStore(Path(server.config.worklist.path))
    return ExplainWorker(store, explainer, WorkerOptions(**options), after_explain=after_explain)


def test_a_deferred_item_gets_its_counterfactuals_through_the_worklist_api(
    worklist_server: WorklistServerFactory, explainer: Explainer, tmp_path: Path
) -> None:
    """PENDING right after triage; after one worker pass DONE with a GIF, a strip and an
    attribution map per explained finding, the frames' predictions and the stop rule."""
    server, port = worklist_server(**EXPLAIN_ON)
    triage, worklist = worklist_stubs(port)
    reply = defer(triage)
    item = reply.worklist_item_id
    pending = worklist.GetExplanation(worklist_pb2.GetExplanationRequest(item_id=item))
    assert pending.state == worklist_pb2.EXPLANATION_PENDING and not pending.counterfactuals
    assert pending.model_version == reply.model_version

    w = worker(server, explainer, owner="w1", out_dir=tmp_path / "files")
    assert w.run(threading.Event(), drain=True) == 1 and w.done == 1

    done = worklist.GetExplanation(
        worklist_pb2.GetExplanationRequest(item_id=item, include_images=True)
    )
    assert done.state == worklist_pb2.EXPLANATION_DONE and done.method == "latent_shift"
    assert done.explainer == explainer.explainer_id and done.attempts == 1
    present = sorted((f for f in reply.findings if f.present), key=lambda f: -f.probability)[
        :2
    ] or [max(reply.findings, key=lambda f: f.probability)]
    assert [c.label for c in done.counterfactuals] == [f.label for f in present]
    for cf, finding in zip(done.counterfactuals, present, strict=True):
        assert cf.probability == pytest.approx(finding.probability, abs=1e-4)  # same input
        assert len(cf.lambdas) == len(cf.predictions) == 10 and cf.lambdas[0] == 0.0
        assert cf.prediction_drop == pytest.approx(cf.predictions[0] - cf.predictions[-1])
        assert cf.attribution.height == cf.attribution.width == 64
        assert len(cf.attribution.values) == 64 * 64 and min(cf.attribution.values) >= 0
        assert cf.gif.startswith(b"GIF89a") and cf.strip_png.startswith(b"\x89PNG")
        assert cf.stop_rule in {
            "no_longer_falls", "below_floor", "dropped_by", "image_changed", "max_lambda",
            "zero_gradient",
        }  # fmt: skip
        stem = cf.label.replace(" ", "_").lower()
        assert (tmp_path / "files" / item / f"{stem}.gif").read_bytes() == cf.gif
    light = worklist.GetExplanation(worklist_pb2.GetExplanationRequest(item_id=item))
    assert light.counterfactuals and not any(c.gif or c.strip_png for c in light.counterfactuals)


def test_worklist_explanation_cli_prints_and_writes_the_counterfactuals(
    worklist_server: WorklistServerFactory,
    explainer: Explainer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``triage worklist explanation ITEM --json --out DIR`` prints the state and each finding's
    drop and stop rule, and writes the GIF and strip the server returns."""
    import json

    from triage_tools.cli import main

    server, port = worklist_server(**EXPLAIN_ON)
    triage, _ = worklist_stubs(port)
    item = defer(triage).worklist_item_id
    cli = ["worklist", "--server", f"127.0.0.1:{port}", "explanation", item, "--json"]
    assert main(cli) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "PENDING"
    assert worker(server, explainer, owner="w").run(threading.Event(), drain=True) == 1
    assert main([*cli, "--out", str(tmp_path / "pics")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["state"] == "DONE" and record["counterfactuals"]
    for row in record["counterfactuals"]:
        assert row["prediction_drop"] == pytest.approx(row["p_first_frame"] - row["p_last_frame"],
                                                       abs=2e-4)  # fmt: skip
        gif, png = (Path(f) for f in row["files"])
        assert gif.read_bytes().startswith(b"GIF89a") and png.read_bytes().startswith(b"\x89PNG")
    assert main(["worklist", "--server", f"127.0.0.1:{port}", "explanation", "nope"]) == 1


def test_the_worker_serves_a_postgresql_worklist(
    worklist_server: WorklistServerFactory, explainer: Explainer, postgres_url: str
) -> None:
    """With the replicas' PostgreSQL worklist the job is queued and made exactly as with SQLite."""
    from service.worklist.postgres import PostgresWorklistStore

    _, port = worklist_server(**EXPLAIN_ON, **{"worklist.url": postgres_url})
    triage, worklist = worklist_stubs(port)
    item = defer(triage).worklist_item_id
    store = PostgresWorklistStore(postgres_url)
    try:
        w = ExplainWorker(store, explainer, WorkerOptions(owner="pg"))
        assert w.run(threading.Event(), drain=True) == 1 and w.done == 1
    finally:
        store.close()
    done = worklist.GetExplanation(worklist_pb2.GetExplanationRequest(item_id=item))
    assert done.state == worklist_pb2.EXPLANATION_DONE and done.counterfactuals


def test_without_explain_enabled_an_item_has_no_explanation(
    worklist_server: WorklistServerFactory,
) -> None:
    """With explain off (the default), GetExplanation answers NOT_FOUND saying why."""
    _, port = worklist_server()
    triage, worklist = worklist_stubs(port)
    reply = defer(triage)
    with pytest.raises(grpc.RpcError) as caught:
        worklist.GetExplanation(worklist_pb2.GetExplanationRequest(item_id=reply.worklist_item_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "explain.enabled" in (caught.value.details() or "")


def test_the_strips_reach_the_pacs_as_a_secondary_capture_in_the_study(
    worklist_server: WorklistServerFactory, explainer: Explainer, tmp_path: Path
) -> None:
    """The worker's Secondary Capture goes out through the server's outbox to a real storescp:
    in the source study, referencing the source image, and valid for dciodvfy."""
    require("storescp", "dciodvfy")
    with storescp(tmp_path / "pacs") as pacs:
        dest = destination(pacs.port, kinds=["SC"], sources=["grpc"])
        server, port = worklist_server(
            **EXPLAIN_ON,
            **{"dicom.destinations": (dest,), "dicom.send_backoff_seconds": 0.05},
        )
        triage, _ = worklist_stubs(port)
        reply = defer(triage)
        overlays = pacs.wait_for(4, timeout=60)  # the four Grad-CAM overlays
        w = worker(server, explainer, owner="w1")
        assert w.run(threading.Event(), drain=True) == 1
        files = pacs.wait_for(5, timeout=60)
        (strip_file,) = set(files) - set(overlays)
        sc = pydicom.dcmread(strip_file)
        assert sc.StudyInstanceUID == reply.study_instance_uid
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
        assert "Latent Shift" in sc.SeriesDescription and sc.BurnedInAnnotation == "YES"
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == reply.sop_instance_uid
        assert sc.Rows > 0 and sc.pixel_array.shape[-1] == 3
        assert dciodvfy_errors(strip_file) == []
        explanation = SqliteWorklistStore(Path(server.config.worklist.path)).explanation(
            reply.worklist_item_id
        )
        assert explanation is not None
        message = worklist_pb2.Explanation.FromString(explanation.payload)
        assert message.sop_instance_uid == sc.SOPInstanceUID


def test_a_worker_dying_mid_job_leaves_the_worklist_intact_and_the_job_retried(
    worklist_server: WorklistServerFactory, explainer: Explainer
) -> None:
    """A worker stopped between explaining and storing changes no item or audit entry; the job
    stays leased, then another worker makes it once the lease lapsed."""
    server, port = worklist_server(**EXPLAIN_ON)
    triage, _ = worklist_stubs(port)
    reply = defer(triage)
    store = SqliteWorklistStore(Path(server.config.worklist.path))
    items, seq = store.list_items(states=STATES), store.latest_seq()

    def die(job: ExplanationJob) -> None:
        raise SystemExit("killed")  # what a signal does: not an Exception the worker catches

    dying = ExplainWorker(
        store, explainer, WorkerOptions(owner="dies", lease_seconds=0.5), after_explain=die
    )
    with pytest.raises(SystemExit):
        dying.run_once()
    assert store.list_items(states=STATES) == items and store.latest_seq() == seq
    left = store.explanation(reply.worklist_item_id)
    assert left is not None and left.state == EXPLAIN_PENDING and left.attempts == 1
    time.sleep(0.6)
    survivor = ExplainWorker(store, explainer, WorkerOptions(owner="lives"))
    assert survivor.run(threading.Event(), drain=True) == 1
    done = store.explanation(reply.worklist_item_id)
    assert done is not None and done.state == EXPLAIN_DONE and done.attempts == 2
    assert store.list_items(states=STATES) == items and store.latest_seq() == seq


def test_a_stalled_worker_blocks_neither_triage_nor_reading(
    worklist_server: WorklistServerFactory, explainer: Explainer
) -> None:
    """While a worker sits inside a job, the server triages more studies and a reader claims and
    completes the very item being explained; the late explanation is stored beside the read."""
    server, port = worklist_server(**EXPLAIN_ON)
    triage, worklist = worklist_stubs(port)
    first = defer(triage)
    inside, release = threading.Event(), threading.Event()

    def stall(job: ExplanationJob) -> None:
        inside.set()
        assert release.wait(60)

    w = worker(server, explainer, owner="slow", after_explain=stall)
    thread = threading.Thread(target=w.run_once)
    thread.start()
    try:
        assert inside.wait(60)
        second = defer(triage)
        assert second.study_instance_uid != first.study_instance_uid
        item = first.worklist_item_id
        worklist.Claim(worklist_pb2.ClaimRequest(item_id=item, reader="dr-a"), timeout=10)
        labels = [worklist_pb2.FinalLabel(label=label, present=False) for label in LABELS]
        completed = worklist.Complete(
            worklist_pb2.CompleteRequest(item_id=item, reader="dr-a", final_labels=labels),
            timeout=10,
        )
        assert completed.state == worklist_pb2.COMPLETED
    finally:
        release.set()
        thread.join(60)
    assert w.done == 1
    after = worklist.GetExplanation(worklist_pb2.GetExplanationRequest(item_id=item))
    assert after.state == worklist_pb2.EXPLANATION_DONE
    items = worklist.List(worklist_pb2.ListRequest(states=[worklist_pb2.COMPLETED])).items
    assert [i.item_id for i in items] == [item]


def test_a_failing_job_is_recorded_and_the_worker_goes_on(
    worklist_server: WorklistServerFactory, explainer: Explainer
) -> None:
    """A job that raises becomes a failed attempt naming the error type; the next job is made."""
    server, port = worklist_server(**EXPLAIN_ON)
    triage, worklist = worklist_stubs(port)
    bad, good = defer(triage), defer(triage)

    def fail_first(job: ExplanationJob) -> None:
        if job.item_id == bad.worklist_item_id:
            raise RuntimeError("codec exploded on header value PATIENT^NAME")

    w = worker(server, explainer, fail_first, owner="w", max_attempts=1)
    assert w.run(threading.Event(), drain=True) == 2
    assert (w.done, w.failed) == (1, 1)
    failed = worklist.GetExplanation(
        worklist_pb2.GetExplanationRequest(item_id=bad.worklist_item_id)
    )
    assert failed.state == worklist_pb2.EXPLANATION_FAILED
    assert failed.error == "RuntimeError"  # the type only: another library's text may hold PHI
    ok = worklist.GetExplanation(worklist_pb2.GetExplanationRequest(item_id=good.worklist_item_id))
    assert ok.state == worklist_pb2.EXPLANATION_DONE


def test_sigkill_of_the_worker_process_loses_nothing(
    worklist_server: WorklistServerFactory,
    bundle_path: Path,
    bundle_classifier: Path,
    tiny_autoencoder: Path,
) -> None:
    """``triage explain-worker`` killed with SIGKILL while working leaves a sound database and
    the same items; a second run (``--drain``) explains every deferred item."""
    server, port = worklist_server(**EXPLAIN_ON)
    triage, _ = worklist_stubs(port)
    replies = [defer(triage) for _ in range(3)]
    db = Path(server.config.worklist.path)
    store = SqliteWorklistStore(db)
    items = store.list_items(states=STATES)
    cmd = [sys.executable, "-m", "triage_tools.cli", "explain-worker", "--bundle", str(bundle_path),
           "--classifier", str(bundle_classifier), "--autoencoder", str(tiny_autoencoder),
           "--worklist", str(db), "--lease-seconds", "1", "--poll-seconds", "0.1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "triage explain-worker: bundle" in line, line
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            (e := store.explanation(r.worklist_item_id)) is not None and e.attempts for r in replies
        ):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
    assert store.list_items(states=STATES) == items
    time.sleep(1.1)  # the killed worker's lease lapses
    again = subprocess.run(
        [*cmd, "--drain"], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert again.returncode == 0, again.stdout + again.stderr
    states = [store.explanation(r.worklist_item_id) for r in replies]
    assert all(s is not None and s.state == EXPLAIN_DONE for s in states)
    assert store.list_items(states=STATES) == items


def test_a_worker_refuses_a_classifier_the_bundle_does_not_serve(
    bundle_path: Path, tiny_autoencoder: Path, tmp_path: Path
) -> None:
    """Loading with another classifier run names both digests instead of explaining the wrong
    model."""
    from explainer.core import ExplainerMismatch
    from tests.export.export_runs import write_classifier_run, write_csv_dataset

    other = tmp_path / "other"
    write_classifier_run(other, write_csv_dataset(tmp_path / "data"), seed=1, size=64)
    with pytest.raises(ExplainerMismatch, match="is not the classifier bundle"):
        load_explainer(bundle_path, other, tiny_autoencoder)


def test_explain_cli_writes_pictures_of_a_dicom_study(
    bundle_path: Path, bundle_classifier: Path, tiny_autoencoder: Path, tmp_path: Path
) -> None:
    """``triage explain FILE`` decodes the study as the server does and writes one GIF and one
    strip per explained finding, named by the hashed study UID, with explanations.json."""
    import json

    from triage_tools.cli import main

    study = tmp_path / "study.dcm"
    study.write_bytes(chest(PatientName="SECRET^NAME"))
    out = tmp_path / "out"
    argv = ["explain", "--bundle", str(bundle_path), "--classifier", str(bundle_classifier),
            "--autoencoder", str(tiny_autoencoder), "--out", str(out), "--finding", "Edema",
            str(study)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "explanations.json").read_text())
    (cf,) = report["counterfactuals"]
    assert cf["finding"] == "Edema" and len(cf["predictions"]) == 10
    assert Path(cf["gif"]).read_bytes().startswith(b"GIF89a")
    assert "SECRET" not in json.dumps(report)
    assert main([*argv[:-3], "--finding", "Bogus", str(study)]) == 2  # an unknown finding
