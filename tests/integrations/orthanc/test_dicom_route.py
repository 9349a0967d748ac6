"""The plain DICOM route, configured by ``triage orthanc config``: Orthanc forwards a study to
triage's Storage SCP and receives the SR, SCs and SEG back by C-STORE into the same study."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from integrations.orthanc.config import FORWARDED, TRIAGE_MODALITY
from integrations.orthanc.process import free_port
from tests.helpers import pydicom_data
from tests.helpers.dcmtk import wait_port
from tests.helpers.dicom_factory import chest, with_study_uid
from tests.helpers.orthanc import orthanc, result_kinds, stable_after
from triage_tools.cli import main
from triage_tools.serve_process import ServeProcess

pytestmark = pytest.mark.slow

LABELS = 4


def test_a_study_forwarded_by_orthanc_comes_back_with_its_sr_scs_and_seg(
    bundle_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With both sides started from the files ``triage orthanc config`` wrote, ``POST
    /modalities/triage/store`` of a chest study makes Orthanc's own study hold one SR, one SC per
    finding and one SEG, sent back by triage over DICOM (no sidecar involved)."""
    http, dicom, scp = free_port(), free_port(), free_port()
    out = tmp_path / "setup"
    ports = ["--http-port", str(http), "--dicom-port", str(dicom)]
    triage = ["--triage-dicom", f"127.0.0.1:{scp}", "--stable-age", "1"]
    status = main(["orthanc", "config", "--out", str(out), *ports, *triage])
    assert status == 0, capsys.readouterr().err
    written = json.loads((out / "orthanc.json").read_text())
    assert written["DicomModalities"][TRIAGE_MODALITY] == ["CXRTRIAGE", "127.0.0.1", scp]
    with orthanc(tmp_path / "orthanc", config_file=out / "orthanc.json") as pacs:
        config = out / "triage-dicom.toml"
        server = ServeProcess(
            [
                *("--bundle", str(bundle_path), "--config", str(config)),
                *("--set", f"worklist.path={tmp_path / 'worklist.db'}"),
            ]
        )
        try:
            server.wait_ready()
            wait_port(scp, 30)
            study = str(pacs.client.post_instance(chest())["ParentStudy"])
            forwarded = pacs.client.store_to_modality(TRIAGE_MODALITY, study)
            assert forwarded.get("InstancesCount", 1) == 1, forwarded
            want = (1, LABELS, 1, 1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _counts(result_kinds(pacs.client, study)) != want:
                time.sleep(0.2)
            time.sleep(1.0)  # nothing more arrives: one copy of each object
            assert _counts(result_kinds(pacs.client, study)) == want
        finally:
            server.stop()


def _counts(kinds: Counter[str]) -> tuple[int, int, int, int]:
    return kinds["SR"], kinds["SC"], kinds["SEG"], kinds["CR"]


def test_with_dicom_autoroute_orthanc_forwards_each_stable_study_once_by_itself(
    bundle_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``--dicom-autoroute`` Orthanc's Lua script forwards a study's CR/DX instances when it
    becomes stable (no REST call, no sidecar); the results coming back make the study stable
    again but it is not forwarded twice, so it holds one copy of each object; a CT is not
    forwarded."""
    http, dicom, scp = free_port(), free_port(), free_port()
    out = tmp_path / "setup"
    ports = ["--http-port", str(http), "--dicom-port", str(dicom), "--dicom-autoroute"]
    triage = ["--triage-dicom", f"127.0.0.1:{scp}", "--stable-age", "1"]
    status = main(["orthanc", "config", "--out", str(out), *ports, *triage])
    assert status == 0, capsys.readouterr().err
    assert (out / "triage-autoroute.lua").exists()
    with orthanc(tmp_path / "orthanc", config_file=out / "orthanc.json") as pacs:
        server = ServeProcess(
            [
                *("--bundle", str(bundle_path), "--config", str(out / "triage-dicom.toml")),
                *("--set", f"worklist.path={tmp_path / 'worklist.db'}"),
            ]
        )
        try:
            server.wait_ready()
            wait_port(scp, 30)
            study = str(pacs.client.post_instance(chest())["ParentStudy"])
            ct_data = with_study_uid(
                pydicom_data.testdata("CT_small.dcm").read_bytes(), generate_uid()
            )
            ct = str(pacs.client.post_instance(ct_data)["ParentStudy"])
            want = (1, LABELS, 1, 1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _counts(result_kinds(pacs.client, study)) != want:
                time.sleep(0.2)
            stable_after(pacs.client, 3.0)  # stable again after the results: no second forward
            assert _counts(result_kinds(pacs.client, study)) == want
            assert pacs.client.metadata(study).get(FORWARDED) == "yes"
            assert FORWARDED not in pacs.client.metadata(ct)
            assert set(result_kinds(pacs.client, ct)) == {"CT"}
        finally:
            server.stop()
