"""The Storage SCP against real peers: association control, C-ECHO, statuses for bad instances."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, _config

from service.config import RADIOGRAPH_STORAGE
from service.worklist.store import STATES, SqliteWorklistStore
from tests.helpers import pydicom_data
from tests.helpers.dcmtk import echoscu, free_port, require, storescu
from tests.helpers.dicom_factory import PHI, chest, rg1_small, to_bytes
from tests.helpers.dicom_servers import DicomServerFactory

pytestmark = pytest.mark.slow

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _events(buffer: io.StringIO, event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def _metric(server: object, name: str, labels: dict[str, str]) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return float(value or 0.0)


def test_echo_answers_and_callers_outside_the_allow_list_are_refused(
    dicom_server: DicomServerFactory,
) -> None:
    """C-ECHO succeeds for a listed AE title; an unknown calling AE title is rejected at
    association, a listed title from a host its entry does not name never gets in, and a SOP
    class outside ``dicom.sop_classes`` has no presentation context."""
    require("echoscu", "storescu")
    _, port = dicom_server(**{"dicom.allowed_callers": ("MODALITY", "ROUTER@10.20.0.0/16")})
    ok = echoscu(port)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    stranger = echoscu(port, calling="STRANGER")
    assert stranger.returncode != 0
    assert "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    wrong_called = echoscu(port, called="SOMEONEELSE")
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr
    wrong_host = echoscu(port, calling="ROUTER")  # ROUTER may only call from 10.20.0.0/16
    assert wrong_host.returncode != 0
    ct = storescu(port, [pydicom_data.testdata("CT_small.dcm")])  # CT is not accepted here
    assert ct.returncode != 0 and "no acceptable presentation contexts" in ct.stderr.lower()
    assert echoscu(port).returncode == 0  # and the server keeps serving


def test_host_outside_every_entry_is_refused_at_connect(dicom_server: DicomServerFactory) -> None:
    """With only remote networks allowed, a loopback peer's connection is closed at once."""
    require("echoscu")
    server, port = dicom_server(**{"dicom.allowed_callers": ("MODALITY@10.0.0.0/8",)})
    refused = echoscu(port)
    assert refused.returncode != 0
    assert server.dicom is not None and server.dicom.scp is not None


def _pynetdicom_store(port: int, path: Path) -> int:
    """Send ``path`` as it is on disk (pynetdicom, no re-encoding); the C-STORE status."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
        return int(status.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    value += b"\0" * (len(value) % 2)
    tag = group.to_bytes(2, "little") + element.to_bytes(2, "little")
    return tag + vr + len(value).to_bytes(2, "little") + value


def _malformed(path: Path) -> Path:
    """A file whose data set names its SOP class and instance, then opens a sequence item that
    never ends (the parser runs out of data inside it)."""
    data = chest()
    ds = pydicom.dcmread(io.BytesIO(data))
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    body = _element(0x0008, 0x0016, b"UI", ds.SOPClassUID.encode())
    body += _element(0x0008, 0x0018, b"UI", ds.SOPInstanceUID.encode())
    body += b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
    path.write_bytes(data[:meta_end] + body)
    return path


def _mismatched(path: Path) -> Path:
    """A file whose file meta (hence the C-STORE request) names another SOP Instance UID than
    its data set (the meta's copy of the UID changed in place, same length)."""
    data = chest()
    uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID.encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    path.write_bytes(data.replace(uid, other, 1))  # the first copy is the file meta's
    return path


def test_ct_is_stored_not_triaged_and_bad_instances_get_failure_statuses(
    dicom_server: DicomServerFactory, tmp_path: Path, log_buffer: io.StringIO
) -> None:
    """A CT is stored (Success) and counted not eligible; an oversize instance gets 0xA700, a
    data set that does not parse 0xC000, one that does not match its request 0xA900; the server
    keeps serving and triages the next good study; no patient value is logged."""
    require("storescu", "echoscu")
    server, port = dicom_server(
        **{
            "dicom.sop_classes": (*RADIOGRAPH_STORAGE, CT_STORAGE),
            "dicom.max_study_bytes": 2_000_000,
            "metrics.port": free_port(),
        }
    )
    ct = storescu(port, [pydicom_data.testdata("CT_small.dcm")])
    assert ct.returncode == 0, ct.stdout + ct.stderr
    big = storescu(port, [pydicom_data.testdata("RG1_UNCR.dcm")])  # 7.2 MB > 2 MB
    assert "Refused: OutOfResources" in big.stdout + big.stderr
    assert _pynetdicom_store(port, _malformed(tmp_path / "bad.dcm")) == 0xC000
    assert _pynetdicom_store(port, _mismatched(tmp_path / "mismatch.dcm")) == 0xA900
    assert echoscu(port).returncode == 0
    good = tmp_path / "good.dcm"
    good.write_bytes(chest())
    stored = storescu(port, [good])
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert server.dicom is not None and server.dicom.intake is not None
    assert server.dicom.intake.wait_idle(60)
    store = SqliteWorklistStore(Path(server.config.worklist.path))
    items = store.list_items(states=STATES)
    store.close()
    good_study = str(pydicom.dcmread(good, stop_before_pixels=True).StudyInstanceUID)
    assert [i.study_uid for i in items] == [good_study]
    studies = _events(log_buffer, "dicom_study")
    assert sorted(str(s["outcome"]) for s in studies) == ["NEW", "not_eligible"]
    assert any(s.get("not_eligible") == "modality" for s in studies)
    labels = {"reason": "modality"}
    assert _metric(server, "triage_dicom_not_eligible_total", labels) == 1.0
    for status in ("out_of_resources", "cannot_understand", "does_not_match_sop_class"):
        assert _metric(server, "triage_dicom_instances_total", {"status": status}) == 1.0
    assert _metric(server, "triage_dicom_instances_total", {"status": "success"}) == 2.0
    refused = _events(log_buffer, "dicom_store_refused")
    assert sorted(str(r["status"]) for r in refused) == ["0xA700", "0xA900", "0xC000"]
    text = log_buffer.getvalue()
    for value in PHI.values():
        assert value not in text


def test_spooled_studies_are_triaged_after_a_restart(
    dicom_server: DicomServerFactory, tmp_path: Path
) -> None:
    """Instances acknowledged while the quiet period runs are triaged by the next server on the
    same spool when the first one stops before completing them."""
    require("storescu")
    overrides = {"dicom.complete_on_release": False, "dicom.quiet_seconds": 600.0}
    first, port = dicom_server(**overrides)
    files = []
    for n in range(2):
        path = tmp_path / f"s{n}.dcm"
        ds = rg1_small(8)
        ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path.write_bytes(to_bytes(ds))
        files.append(path)
        assert storescu(port, [path]).returncode == 0
    first.stop(0).wait(30)
    second, _ = dicom_server(**{**overrides, "dicom.port": free_port()})
    assert second.dicom is not None and second.dicom.intake is not None
    assert second.dicom.intake.wait_idle(60)
    store = SqliteWorklistStore(Path(second.config.worklist.path))
    studies = {i.study_uid for i in store.list_items(states=STATES)}
    store.close()
    assert studies == {str(pydicom.dcmread(p).StudyInstanceUID) for p in files}
    assert not list((tmp_path / "spool" / "studies").iterdir())
