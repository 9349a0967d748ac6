"""A real Orthanc, a real ``triage serve`` and the sidecar: every stable chest study is triaged
once and holds our SR, SCs and SEG and the decision metadata; outages and SIGKILL lose nothing."""

from __future__ import annotations

import io
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from integrations.orthanc import metadata as md
from integrations.orthanc.process import OrthancProcess, free_port
from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc
from service.dicom.sr import read_report
from service.worklist.store import STATES, SqliteWorklistStore
from tests.helpers import pydicom_data
from tests.helpers.dcmtk import require
from tests.helpers.dicom_factory import PHI, chest, with_study_uid
from tests.helpers.dicom_servers import study_of
from tests.helpers.orthanc import (
    Sidecar,
    orthanc,
    result_kinds,
    serve_on,
    stable_after,
    storescu_to,
    study_id_of,
    wait_until_recorded,
)
from triage_tools.client import ChannelOptions, open_channel
from triage_tools.serve_process import ServeProcess

pytestmark = pytest.mark.slow

LABELS = 4  # findings of the test bundle: one SC each
TOLERANCE = 1e-5  # float32 probabilities of two runs (batching) may differ in the last bits


@dataclass
class World:
    """Orthanc, the server and the sidecar of the module's first test."""

    orthanc: OrthancProcess
    server: ServeProcess
    sidecar: Sidecar
    worklist: Path


@pytest.fixture(name="world", scope="module")
def fixture_world(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A real Orthanc (StableAge 1 s), ``triage serve`` and ``triage orthanc follow``."""
    work = tmp_path_factory.mktemp("orthanc-world")
    with orthanc(work / "orthanc", stable_age=1) as pacs:
        worklist = work / "worklist.db"
        server = ServeProcess(["--bundle", str(bundle_path), "--set", f"worklist.path={worklist}"])
        server.wait_ready()
        sidecar = Sidecar(pacs.url, server.address, work / "state")
        try:
            yield World(pacs, server, sidecar, worklist)
        finally:
            sidecar.stop()
            server.stop()


def _phantom_studies(phantoms: Path, count: int) -> dict[str, list[Path]]:
    by_study: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(phantoms.glob("**/*.dcm")):
        if "mask" not in path.name:
            by_study[study_of(path)].append(path)
    return dict(list(by_study.items())[:count])


def _patient_values(files: list[Path]) -> set[str]:
    values = set(PHI.values())
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            value = str(ds.get(key, "") or "")
            if len(value) >= 4:
                values.add(value)
    return values


def _items(worklist: Path) -> list[str]:
    store = SqliteWorklistStore(worklist)
    try:
        return [item.study_uid for item in store.list_items(states=STATES, limit=10_000)]
    finally:
        store.close()


def _sr_of(world: World, study_id: str) -> pydicom.Dataset:
    for series in world.orthanc.client.get_json(f"/studies/{study_id}/series"):
        if series["MainDicomTags"].get("Modality") == "SR":
            data = world.orthanc.client.instance_file(series["Instances"][0])
            return pydicom.dcmread(io.BytesIO(data))
    raise AssertionError("no SR in the study")


def test_stable_studies_hold_one_sr_an_sc_per_finding_one_seg_and_the_decision(
    world: World, tiny_phantoms: Path, tmp_path: Path
) -> None:
    """Phantom studies of several sites (some with a lateral) and RG1, uploaded by REST and by
    storescu, each end with exactly one SR, one SC per finding and one SEG and the decision
    metadata; RG3 (a tibia) and a CT hold none; the SR reads back what gRPC answers for the same
    study (a replay of the one stored result); no patient value is in the sidecar's log."""
    require("storescu")
    client = world.orthanc.client
    phantoms = _phantom_studies(tiny_phantoms, 12)
    sites = {
        str(pydicom.dcmread(f, stop_before_pixels=True).InstitutionName)
        for files in phantoms.values()
        for f in files
    }
    assert len(sites) >= 3 and any(len(files) > 1 for files in phantoms.values())
    extra = tmp_path / "extra"
    extra.mkdir()
    made = {
        "rg1": with_study_uid(pydicom_data.testdata("RG1_UNCR.dcm").read_bytes(), generate_uid()),
        "phi": chest(),
        "rg3": with_study_uid(pydicom_data.testdata("RG3_UNCR.dcm").read_bytes(), generate_uid()),
        "ct": with_study_uid(pydicom_data.testdata("CT_small.dcm").read_bytes(), generate_uid()),
    }
    studies = dict(phantoms)
    for name, data in made.items():
        (extra / f"{name}.dcm").write_bytes(data)
        studies[study_of(extra / f"{name}.dcm")] = [extra / f"{name}.dcm"]
    by_rest = list(studies)[::2]
    for uid, files in studies.items():
        if uid in by_rest:
            for path in files:
                assert client.post_instance(path.read_bytes())["Status"] == "Success"
        else:
            storescu_to(world.orthanc.dicom_port, files)
    ids = {uid: study_id_of(client, uid) for uid in studies}
    recorded = wait_until_recorded(client, ids.values(), timeout=60)
    stable_after(client, 2.5)  # our own uploads made the studies stable again: nothing more
    not_eligible = {study_of(extra / "rg3.dcm"), study_of(extra / "ct.dcm")}
    channel = open_channel(ChannelOptions(world.server.address))
    stub = triage_pb2_grpc.TriageStub(channel)  # type: ignore[no-untyped-call]
    try:
        for uid, study_id in ids.items():
            kinds = result_kinds(client, study_id)
            meta = client.metadata(study_id)
            if uid in not_eligible:
                assert meta[md.STATUS] == "not-eligible"
                assert md.DECISION not in meta
                assert not {"SR", "SC", "SEG"} & set(kinds), kinds
                continue
            assert recorded[study_id][md.STATUS] == "done"
            assert (kinds["SR"], kinds["SC"], kinds["SEG"]) == (1, LABELS, 1), kinds
            reply = stub.Triage(
                triage_pb2.TriageRequest(instances=[p.read_bytes() for p in studies[uid]]),
                timeout=60,
            )
            assert reply.replayed
            assert meta[md.DECISION] == triage_pb2.Decision.Name(reply.decision)
            assert meta[md.PRIORITY] == triage_pb2.Priority.Name(reply.priority)
            assert meta[md.WORKLIST] == reply.worklist
            assert meta[md.WORKLIST_ITEM] == reply.worklist_item_id
            reasons = [triage_pb2.DeferReason.Name(r) for r in reply.defer_reasons]
            assert meta[md.REASONS] == ",".join(reasons)
            posted = json.loads(meta[md.RESULT])["objects"]
            assert (len(posted["SR"]), len(posted["SC"]), len(posted["SEG"])) == (1, LABELS, 1)
            report = read_report(_sr_of(world, study_id))
            assert report.source_sop_instance_uid == reply.sop_instance_uid
            assert report.decision == triage_pb2.Decision.Name(reply.decision)
            assert report.p_error == pytest.approx(reply.p_error, abs=TOLERANCE)
            assert [f.label for f in report.findings] == [f.label for f in reply.findings]
            for read, sent in zip(report.findings, reply.findings, strict=True):
                assert read.probability == pytest.approx(sent.probability, abs=TOLERANCE)
                assert read.present == sent.present
    finally:
        channel.close()
    items = _items(world.worklist)
    assert sorted(items) == sorted(set(studies) - not_eligible)  # each triaged once
    log = "".join(world.sidecar.lines)
    for value in _patient_values([p for files in studies.values() for p in files]):
        assert value not in log


def _upload(pacs: OrthancProcess, count: int) -> list[str]:
    return [str(pacs.client.post_instance(chest())["ParentStudy"]) for _ in range(count)]


def _assert_each_once(pacs: OrthancProcess, ids: list[str], worklist: Path) -> None:
    recorded = wait_until_recorded(pacs.client, ids, timeout=60)
    stable_after(pacs.client, 2.5)
    assert {m[md.STATUS] for m in recorded.values()} == {"done"}
    for study_id in ids:
        kinds = result_kinds(pacs.client, study_id)
        assert (kinds["SR"], kinds["SC"], kinds["SEG"], kinds["CR"]) == (1, LABELS, 1, 1), kinds
    items = _items(worklist)
    assert len(items) == len(set(items)) == len(ids)


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen in {timeout} s")


def test_studies_arriving_while_the_server_is_down_are_triaged_once_it_is_back(
    bundle_path: Path, tmp_path: Path
) -> None:
    """With ``triage serve`` stopped while studies become stable, the sidecar keeps retrying
    and records nothing; started again on the same address, every study is triaged exactly
    once (one worklist item, one SR, one SC per finding, one SEG each)."""
    port, worklist = free_port(), tmp_path / "worklist.db"
    args = ("--set", f"worklist.path={worklist}")
    with orthanc(tmp_path / "orthanc", stable_age=1) as pacs:
        server = serve_on(bundle_path, port, *args)
        sidecar = Sidecar(pacs.url, f"127.0.0.1:{port}", tmp_path / "state")
        try:
            server.stop()
            ids = _upload(pacs, 4)
            _wait_for(lambda: sidecar.count("orthanc_study_retry") >= 8, 30, "retries")
            assert not any(md.STATUS in pacs.client.metadata(s) for s in ids)
            server = serve_on(bundle_path, port, *args)
            _assert_each_once(pacs, ids, worklist)
        finally:
            sidecar.stop()
            server.stop()


def test_a_sidecar_killed_mid_work_resumes_and_posts_nothing_twice(
    bundle_path: Path, tmp_path: Path
) -> None:
    """SIGKILL of the sidecar while it triages and posts, then a restart on the same state
    folder: every study ends triaged exactly once with exactly one copy of each object."""
    worklist = tmp_path / "worklist.db"
    with orthanc(tmp_path / "orthanc", stable_age=1) as pacs:
        server = ServeProcess(["--bundle", str(bundle_path), "--set", f"worklist.path={worklist}"])
        server.wait_ready()
        try:
            first = Sidecar(pacs.url, server.address, tmp_path / "state", "--workers", "3")
            ids = _upload(pacs, 8)
            _wait_for(lambda: first.count("orthanc_study_triaged") >= 2, 60, "a first result")
            first.kill()
            done_before = first.count("orthanc_study_triaged")
            assert done_before < len(ids)
            second = Sidecar(pacs.url, server.address, tmp_path / "state")
            try:
                _assert_each_once(pacs, ids, worklist)
            finally:
                second.stop()
            # a study whose posting the kill cut short is finished by the second sidecar; one
            # killed after its last write is found done in Orthanc (at most one per worker)
            resumed = second.count("orthanc_study_triaged")
            assert len(ids) - done_before - 3 <= resumed <= len(ids) - done_before
        finally:
            server.stop()
