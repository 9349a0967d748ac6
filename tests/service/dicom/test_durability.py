"""SIGKILL of ``triage serve`` while studies arrive over DICOM and results go out: nothing lost."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from service.worklist.store import OUTBOX_QUEUED, STATES, SqliteWorklistStore
from tests.helpers.dcmtk import free_port, require, storescp, wait_port
from tests.helpers.dicom_factory import PHI, chest
from triage_common.logging import hash_uid
from triage_tools.serve_process import ServeProcess

pytestmark = pytest.mark.slow

ROUNDS = 3
CR = "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT = "1.2.840.10008.1.2.1"


def _config(path: Path, work: Path, port: int, pacs_port: int) -> Path:
    path.write_text(
        f"""
[worklist]
path = "{work / "worklist.db"}"
[inference]
warmup_runs = 1
[dicom]
port = {port}
spool_dir = "{work / "spool"}"
complete_on_release = true
quiet_seconds = 0.5
retry_seconds = 0.2
send_backoff_seconds = 0.05
send_backoff_max_seconds = 0.2
send_lease_seconds = 1.0
[[dicom.destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
"""
    )
    return path


def _serve(bundle: Path, config: Path, port: int) -> ServeProcess:
    server = ServeProcess(["--bundle", str(bundle), "--config", str(config)])
    server.wait_ready()
    wait_port(port, 30)
    return server


def _send_until(port: int, stop: threading.Event, acked: dict[str, str]) -> None:
    """Send one-instance studies until ``stop``; note each one acknowledged with Success."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CR, [EXPLICIT])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    while not stop.is_set():
        data = chest()
        ds = pydicom.dcmread(io.BytesIO(data))
        try:
            assoc = ae.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
        except Exception:
            return
        if not assoc.is_established:
            return
        status = assoc.send_c_store(ds)
        if status and int(status.Status) == 0:
            acked[str(ds.StudyInstanceUID)] = str(ds.SOPInstanceUID)
        if assoc.is_established:
            assoc.release()


def test_sigkill_during_intake_and_sending_loses_nothing(bundle_path: Path, tmp_path: Path) -> None:
    """Over several rounds of SIGKILL while instances arrive and results are sent, every
    acknowledged study ends with its worklist item and its SR, SCs and SEG at the destination;
    the only repeats are resends after a kill between sending and marking, at most one object
    per kill; the spool ends empty; no patient value in the server's output."""
    require("storescp")
    acked: dict[str, str] = {}
    lines: list[str] = []
    with storescp(tmp_path / "pacs") as pacs:
        for n in range(ROUNDS):
            port = free_port()
            config = _config(tmp_path / f"triage-{n}.toml", tmp_path, port, pacs.port)
            server = _serve(bundle_path, config, port)
            stop = threading.Event()
            sender = threading.Thread(target=_send_until, args=(port, stop, acked))
            sender.start()
            target = len(acked) + 3
            deadline = time.monotonic() + 60
            while len(acked) < target and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3 * n)  # later rounds: results are being written and sent
            server.kill()
            stop.set()
            sender.join(30)
            lines += server.lines
        port = free_port()
        config = _config(tmp_path / "triage-last.toml", tmp_path, port, pacs.port)
        server = _serve(bundle_path, config, port)
        try:
            store = SqliteWorklistStore(tmp_path / "worklist.db")
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                items = {i.study_uid for i in store.list_items(states=STATES, limit=10_000)}
                queued = store.list_outbox(states=(OUTBOX_QUEUED,), limit=10_000)
                if set(acked) <= items and not queued:
                    break
                time.sleep(0.1)
            rows = store.list_outbox(limit=100_000)
            store.close()
            time.sleep(1.0)
            receipts = pacs.by_uid()
        finally:
            server.stop()
            lines += server.lines
    assert len(acked) >= ROUNDS * 3
    missing = {hash_uid(uid) for uid in set(acked) - items}
    assert not missing, [line for line in lines if any(h in line for h in missing)][-40:]
    per_study = Counter(r.study_uid for r in rows)
    assert all(per_study[uid] == 6 for uid in acked)  # SR + 4 SC + SEG each
    assert {r.sop_instance_uid for r in rows} <= set(receipts)
    repeats = sum(n - 1 for n in receipts.values())
    assert repeats <= ROUNDS
    assert not list((tmp_path / "spool" / "studies").iterdir())
    output = "".join(lines)
    for value in PHI.values():
        assert value not in output
