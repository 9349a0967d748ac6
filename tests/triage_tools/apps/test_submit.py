"""``triage submit`` groups files by study, streams large ones, and prints a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.rpc.server import TriageServer
from tests.helpers.dicom_factory import chest, file_bytes
from triage_common.logging import hash_uid
from triage_tools.cli import main


@pytest.fixture(name="study_folder")
def fixture_study_folder(tmp_path: Path) -> Path:
    """Two chest studies (one with PA + lateral), the RG3 tibia, and a file that is not DICOM."""
    folder = tmp_path / "incoming"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "pa.dcm").write_bytes(chest(study_uid="1.2.826.0.1.3680043.99.10"))
    (folder / "a" / "lat.dcm").write_bytes(
        chest(study_uid="1.2.826.0.1.3680043.99.10", ViewPosition="LL")
    )
    (folder / "b.dcm").write_bytes(file_bytes("RG1_UNCR.dcm"))  # 7 MB: streamed in 1 MiB chunks
    (folder / "tibia.dcm").write_bytes(file_bytes("RG3_UNCI.dcm"))
    (folder / "notes.txt").write_text("not dicom")
    return folder


def test_submit_json(
    shared_server: tuple[TriageServer, int],
    study_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each study is one call; JSON lists results and the tibia's FAILED_PRECONDITION."""
    _, port = shared_server
    overlays = tmp_path / "overlays"
    argv = ["submit", "--server", f"127.0.0.1:{port}", str(study_folder), "--json"]
    argv += ["--overlay", str(overlays), "--defer-cost", "0.1"]
    code = main(argv)
    out = capsys.readouterr()
    assert code == 1  # the tibia failed
    payload = json.loads(out.out)
    results = {r["study"]: r for r in payload["results"]}
    assert len(results) == 3
    paired = results[hash_uid("1.2.826.0.1.3680043.99.10")]
    assert paired["status"] == "OK" and paired["defer_cost"] == 0.1  # echoed back: exact
    assert [i["reason"] for i in paired["ignored_instances"]] == ["lateral view (LL)"]
    failed = [r for r in results.values() if r["status"] != "OK"]
    assert [r["status"] for r in failed] == ["FAILED_PRECONDITION"]
    assert "EXTREMITY" in failed[0]["error"]
    assert "notes.txt" in out.err
    assert len(list(overlays.glob("*.png"))) == 2 * 4


def test_submit_table(
    shared_server: tuple[TriageServer, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --json a table shows the hashed study, decision, worklist and priority."""
    _, port = shared_server
    path = tmp_path / "one.dcm"
    path.write_bytes(chest(study_uid="1.2.826.0.1.3680043.99.11"))
    assert main(["submit", "--server", f"127.0.0.1:{port}", str(path)]) == 0
    out = capsys.readouterr().out
    assert hash_uid("1.2.826.0.1.3680043.99.11") in out
    assert "radiologist" in out or "ai-normal" in out
    assert "1.2.826.0.1.3680043.99.11" not in out


def test_submit_of_a_missing_path_says_it_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path that does not exist is refused in one line naming it, exit 2, before any call."""
    missing = tmp_path / "nonexistent"
    assert main(["submit", "--server", "127.0.0.1:1", str(missing)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"triage submit: {missing}: no such file or folder"
