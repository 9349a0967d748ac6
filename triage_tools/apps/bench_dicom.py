"""``triage bench dicom``: studies/s through the DICOM Storage SCP beside gRPC, in one run.

Starts ``triage serve`` from ``--bundle`` as a child process with its Storage SCP on a free
loopback port, the worklist in a temporary folder, studies complete when their association is
released, and (unless ``--no-destination``) a dcmtk ``storescp`` as the destination of every
result (SR, one SC per finding, SEG), from either front door. Then, for ``--studies`` studies
(RG1 by default, every one with a fresh StudyInstanceUID and SOP Instance UID, so no study is a
replay):

- DICOM: ``--concurrency`` threads each open one association per study (pynetdicom, as a
  modality does) and C-STORE it; the clock stops when every study's result is committed in the
  worklist (studies/s "committed") and, with the destination, when its objects have all arrived
  there ("at destination");
- gRPC: the same number of studies (other fresh UIDs) from ``--concurrency`` client threads
  (TriageStream in 1 MiB chunks, as ``triage submit`` sends them), timed until the last reply
  (each reply comes after the commit), and with the destination until the objects arrived.

The two runs share the server process, its model and its configuration; the figures are
printed as a table and written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CHUNK = 1 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench dicom``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--studies", type=int, default=24, help="studies per front door (24)")
    parser.add_argument("--concurrency", type=int, default=4, help="senders at once (4)")
    parser.add_argument("--study", type=Path, help="one-instance study file (default RG1_UNCR)")
    parser.add_argument(
        "--no-destination",
        action="store_true",
        help="no storescp destination: time the intake and the commit only",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a server configuration key (repeatable), as for `triage serve`",
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fresh(template: bytes) -> tuple[str, bytes]:
    """The study with new Study and SOP Instance UIDs: (StudyInstanceUID, Part-10 bytes)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(template))
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return str(ds.StudyInstanceUID), out.getvalue()


def _parallel(jobs: list[bytes], workers: int, send: Callable[[bytes], None]) -> None:
    lock = threading.Lock()
    pending = list(jobs)
    errors: list[BaseException] = []

    def run() -> None:
        while True:
            with lock:
                if not pending or errors:
                    return
                data = pending.pop()
            try:
                send(data)
            except BaseException as exc:
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a sender failed: {errors[0]!r}")


def _dicom_sender(port: int) -> Callable[[bytes], None]:
    import pydicom
    from pynetdicom import AE

    def send(data: bytes) -> None:
        ds = pydicom.dcmread(io.BytesIO(data))
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
        if not assoc.is_established:
            raise RuntimeError("the SCP refused the association")
        status = assoc.send_c_store(ds)
        assoc.release()
        if status is None or int(status.Status) != 0:
            raise RuntimeError(f"C-STORE status {status.Status if status else 'none'}")

    return send


def _grpc_sender(address: str) -> Callable[[bytes], None]:
    import grpc

    from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc

    options = [("grpc.max_send_message_length", 256 << 20)]
    channel = grpc.insecure_channel(address, options=options)
    stub = triage_pb2_grpc.TriageStub(channel)  # type: ignore[no-untyped-call]

    def send(data: bytes) -> None:
        chunks = [
            triage_pb2.StudyChunk(instance=0, data=data[i : i + CHUNK])
            for i in range(0, len(data), CHUNK)
        ]
        stub.TriageStream(iter(chunks), timeout=120)

    return send


def _wait(done: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``done()`` (RuntimeError past ``timeout``)."""
    start = time.perf_counter()
    while not done():
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"not done within {timeout:.0f} s")
        time.sleep(0.02)
    return time.perf_counter()


def _config(work: Path, port: int, pacs_port: int | None) -> Path:
    text = f"""
[worklist]
path = "{work / "worklist.db"}"
[dicom]
port = {port}
spool_dir = "{work / "spool"}"
complete_on_release = true
triage_workers = 4
"""
    if pacs_port is not None:
        text += f"""
[[dicom.destinations]]
name = "bench"
ae_title = "BENCHPACS"
host = "127.0.0.1"
port = {pacs_port}
"""
    path = work / "triage.toml"
    path.write_text(text)
    return path


def _measure(
    name: str,
    jobs: list[tuple[str, bytes]],
    send: Callable[[bytes], None],
    concurrency: int,
    committed: Callable[[set[str]], bool],
    arrived: Callable[[int], bool] | None,
    objects: int,
) -> dict[str, Any]:
    studies = {uid for uid, _ in jobs}
    start = time.perf_counter()
    _parallel([data for _, data in jobs], concurrency, send)
    sent = time.perf_counter()
    done = _wait(lambda: committed(studies), 600)
    row: dict[str, Any] = {
        "front_door": name,
        "studies": len(jobs),
        "sent_s": round(sent - start, 3),
        "committed_studies_per_s": round(len(jobs) / (done - start), 2),
    }
    if arrived is not None:
        at_pacs = _wait(lambda: arrived(objects), 600)
        row["at_destination_studies_per_s"] = round(len(jobs) / (at_pacs - start), 2)
    return row


def run(args: argparse.Namespace) -> int:
    """Start the server (and destination), time both front doors, print and write figures."""
    from service.worklist.store import STATES, SqliteWorklistStore
    from triage_common.console import print_table
    from triage_tools.serve_process import ServeProcess

    if not args.bundle.is_dir():
        print(f"triage bench dicom: --bundle {args.bundle}: no such folder", file=sys.stderr)
        return 2
    if args.studies < 1 or args.concurrency < 1:
        print("triage bench dicom: --studies and --concurrency must be >= 1", file=sys.stderr)
        return 2
    with_pacs = not args.no_destination
    if with_pacs and shutil.which("storescp") is None:
        print("triage bench dicom: storescp (dcmtk) is not installed; use --no-destination",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.study is None:
        from pydicom.data import get_testdata_file

        args.study = Path(str(get_testdata_file("RG1_UNCR.dcm")))
    template = args.study.read_bytes()
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    pacs = None
    try:
        pacs_port = _free_port() if with_pacs else None
        if pacs_port is not None:
            (work / "pacs").mkdir()
            pacs = subprocess.Popen(
                ["storescp", "--promiscuous", "+xa", "+uf", "-aet", "BENCHPACS", "-od",
                 str(work / "pacs"), str(pacs_port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        port = _free_port()
        sets = [x for item in args.set for x in ("--set", item)]
        server = ServeProcess(
            ["--bundle", str(args.bundle), "--config", str(_config(work, port, pacs_port)), *sets]
        )
        try:
            server.wait_ready()
            store = SqliteWorklistStore(work / "worklist.db")

            def committed(studies: set[str]) -> bool:
                items = store.list_items(states=STATES, limit=1_000_000)
                return studies <= {i.study_uid for i in items}

            def arrived(count: int) -> bool:
                return len(list((work / "pacs").iterdir())) >= count

            rows = []
            per_study = 0
            for name, send in (
                ("DICOM C-STORE", _dicom_sender(port)),
                ("gRPC TriageStream", _grpc_sender(server.address)),
            ):
                jobs = [_fresh(template) for _ in range(args.studies)]
                if with_pacs and not per_study:  # objects per study, from one warm-up study
                    warm_uid, warm_data = _fresh(template)
                    send(warm_data)
                    _wait(lambda uid=warm_uid: committed({uid}), 120)  # type: ignore[misc]
                    _wait(lambda: arrived(1), 120)
                    time.sleep(2.0)
                    per_study = len(list((work / "pacs").iterdir()))
                before = len(list((work / "pacs").iterdir())) if with_pacs else 0
                rows.append(
                    _measure(name, jobs, send, args.concurrency, committed,
                             arrived if with_pacs else None,
                             before + per_study * len(jobs))
                )  # fmt: skip
            store.close()
        finally:
            server.stop()
    finally:
        if pacs is not None:
            pacs.terminate()
            pacs.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    columns = ["front_door", "studies", "sent_s", "committed_studies_per_s"]
    if with_pacs:
        columns.append("at_destination_studies_per_s")
    print_table(
        f"bench dicom: {args.study.name}, concurrency {args.concurrency}"
        + (f", {per_study} objects per study to a storescp" if with_pacs else ""),
        columns,
        [[r.get(c, "") for c in columns] for r in rows],
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"objects_per_study": per_study, "rows": rows}, indent=2))
    return 0
