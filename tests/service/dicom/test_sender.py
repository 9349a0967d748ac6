"""The outbox against a real destination: down at first, then everything arrives once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from service.worklist.store import OUTBOX_SENT, SqliteWorklistStore
from tests.helpers.dcmtk import StoreSCP, free_port, require, start_storescp, stop_storescp
from tests.helpers.dcmtk import storescu as send_with_storescu
from tests.helpers.dicom_factory import rg1_small, to_bytes
from tests.helpers.dicom_servers import DicomServerFactory, destination
from tests.helpers.pki import make_pki

pytestmark = pytest.mark.slow

#: Failed attempts every object must see before the destination comes up.
DOWN_ATTEMPTS = 3


def _study(path: Path) -> Path:
    ds = rg1_small(8)
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.write_bytes(to_bytes(ds))
    return path


def test_destination_down_then_up_gets_everything_exactly_once(
    dicom_server: DicomServerFactory, tmp_path: Path
) -> None:
    """While the destination refuses connections every object is retried with backoff; once it
    listens, each object arrives exactly once and its outbox row is SENT."""
    require("storescu", "storescp")
    pacs = StoreSCP(free_port(), tmp_path / "pacs", "PACS")
    pacs.folder.mkdir()
    server, port = dicom_server(**{"dicom.destinations": (destination(pacs.port),)})
    for n in range(2):
        sent = send_with_storescu(port, [_study(tmp_path / f"s{n}.dcm")])
        assert sent.returncode == 0, sent.stdout + sent.stderr
    store = SqliteWorklistStore(Path(server.config.worklist.path))
    deadline = time.monotonic() + 60
    rows = store.list_outbox()
    while time.monotonic() < deadline:
        rows = store.list_outbox()
        if len(rows) == 12 and min(r.attempts for r in rows) >= DOWN_ATTEMPTS:
            break
        time.sleep(0.05)
    assert len(rows) == 12 and min(r.attempts for r in rows) >= DOWN_ATTEMPTS
    assert all(r.state == "QUEUED" and "association failed" in r.last_error for r in rows)
    start_storescp(pacs)
    try:
        pacs.wait_for(12, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            r.state != OUTBOX_SENT for r in store.list_outbox()
        ):
            time.sleep(0.05)
        time.sleep(1.0)  # anything sent twice would arrive now
        receipts = pacs.by_uid()
    finally:
        stop_storescp(pacs)
    rows = store.list_outbox()
    stats = store.outbox_stats()["pacs"]
    store.close()
    assert sorted(receipts) == sorted(r.sop_instance_uid for r in rows)
    assert set(receipts.values()) == {1}
    assert all(r.state == OUTBOX_SENT and r.attempts > DOWN_ATTEMPTS for r in rows)
    assert (stats.queued, stats.sent, stats.failed, stats.oldest_queued) == (0, 12, 0, None)


def test_a_tls_destination_gets_the_objects_only_when_its_certificate_is_trusted(
    dicom_server: DicomServerFactory, tmp_path: Path
) -> None:
    """Results go to a dcmtk storescp speaking DICOM over TLS when the destination's tls_ca
    signed its certificate; a destination trusting another CA gets nothing and its rows stay
    queued with the failure recorded."""
    require("storescu", "storescp")
    (tmp_path / "pki").mkdir()
    (tmp_path / "other-ca").mkdir()
    pki, stranger = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other-ca")
    pacs = StoreSCP(free_port(), tmp_path / "pacs", "PACS")
    pacs.options = ("+tls", str(pki.server_key), str(pki.server_cert), "-ic")
    pacs.folder.mkdir()
    start_storescp(pacs)
    try:
        trusted = destination(pacs.port, "pacs", tls=True, tls_ca=str(pki.ca))
        untrusted = destination(pacs.port, "elsewhere", tls=True, tls_ca=str(stranger.ca))
        server, port = dicom_server(**{"dicom.destinations": (trusted, untrusted)})
        sent = send_with_storescu(port, [_study(tmp_path / "s.dcm")])
        assert sent.returncode == 0, sent.stdout + sent.stderr
        pacs.wait_for(6, timeout=60)  # SR + 4 SC + SEG over TLS
        store = SqliteWorklistStore(Path(server.config.worklist.path))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = store.list_outbox(destination="elsewhere")
            if len(rows) == 6 and min(r.attempts for r in rows) >= 1:
                break
            time.sleep(0.05)
        sent_rows = store.list_outbox(destination="pacs")
        store.close()
    finally:
        stop_storescp(pacs)
    assert len(pacs.received()) == 6
    assert len(rows) == 6 and all(r.state == "QUEUED" and r.attempts >= 1 for r in rows)
    assert all(r.last_error for r in rows)
    assert {r.sop_instance_uid for r in sent_rows} == set(pacs.by_uid())
