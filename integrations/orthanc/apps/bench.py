"""``triage bench orthanc``: studies/min end to end through Orthanc and the sidecar, beside the
gRPC-only rate of the same server in the same run.

Starts a real Orthanc (``--stable-age``) on free loopback ports, ``triage serve`` from
``--bundle`` (worklist in a temporary folder) and ``triage orthanc follow`` as child processes.
Then, with ``--studies`` fresh copies of ``--study`` (new Study and SOP Instance UIDs each, so
nothing is a replay):

- gRPC only: ``--concurrency`` client threads send the studies over ``TriageStream`` with
  ``include_dicom_objects`` (the sidecar's call), timed until the last reply;
- Orthanc: ``--concurrency`` threads upload the other copies at once (``POST /instances``); the
  clock runs from the first upload until every study holds ``triage-status`` (so it includes
  Orthanc's StableAge, the sidecar's polling and posting the SR, SCs and SEG back).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench orthanc``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--studies", type=int, default=50, help="studies per route (50)")
    parser.add_argument("--concurrency", type=int, default=4, help="senders at once (4)")
    parser.add_argument("--workers", type=int, default=4, help="sidecar workers (4)")
    parser.add_argument("--stable-age", type=int, default=1, help="Orthanc's StableAge, s (1)")
    parser.add_argument("--study", type=Path, help="one-instance study file (default RG1_UNCR)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")


def _fresh(template: bytes) -> bytes:
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(template))
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _template(path: Path | None) -> bytes | str:
    if path is not None:
        return path.read_bytes() if path.is_file() else f"--study {path}: no such file"
    from pydicom.data import get_testdata_file

    found = get_testdata_file("RG1_UNCR.dcm")
    return Path(str(found)).read_bytes() if found else "--study is needed (no pydicom-data)"


def run(args: argparse.Namespace) -> int:
    """Run both routes and print the figures."""
    if args.studies < 1 or args.concurrency < 1 or args.workers < 1 or args.stable_age < 1:
        print(
            "triage bench orthanc: --studies, --concurrency, --workers, --stable-age must be "
            "at least 1",
            file=sys.stderr,
        )
        return 2
    template = _template(args.study)
    if isinstance(template, str):
        print(f"triage bench orthanc: {template}", file=sys.stderr)
        return 2
    from integrations.orthanc.process import OrthancProcess, orthanc_binary

    if orthanc_binary() is None:
        print(
            "triage bench orthanc: Orthanc is not installed (Debian package orthanc)",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-orthanc-") as tmp:
        figures = _bench(args, template, Path(tmp), OrthancProcess)
    print(
        f"studies per route: {args.studies}, concurrency {args.concurrency}, "
        f"sidecar workers {args.workers}, StableAge {args.stable_age} s"
    )
    print(
        f"gRPC only (TriageStream + DICOM objects): {figures['grpc_per_min']:.1f} studies/min "
        f"({figures['grpc_s']:.1f} s)"
    )
    print(
        f"Orthanc end to end (upload -> recorded):  {figures['orthanc_per_min']:.1f} studies/min "
        f"({figures['orthanc_s']:.1f} s, all {figures['recorded']} recorded)"
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["recorded"] == args.studies else 1


def _bench(
    args: argparse.Namespace, template: bytes, work: Path, orthanc_cls: Any
) -> dict[str, Any]:
    import subprocess

    from integrations.orthanc.metadata import STATUS
    from service._proto.triage.v1 import triage_pb2_grpc
    from triage_tools.client import ChannelOptions, chunks, open_channel
    from triage_tools.serve_process import ServeProcess

    grpc_studies = [_fresh(template) for _ in range(args.studies)]
    orthanc_studies = [_fresh(template) for _ in range(args.studies)]
    pacs = orthanc_cls(work / "orthanc", stable_age=args.stable_age)
    server = ServeProcess(
        ["--bundle", str(args.bundle), "--set", f"worklist.path={work / 'worklist.db'}"]
    )
    sidecar: subprocess.Popen[bytes] | None = None
    try:
        server.wait_ready()
        channel = open_channel(ChannelOptions(server.address))
        stub = triage_pb2_grpc.TriageStub(channel)  # type: ignore[no-untyped-call]

        def one(data: bytes) -> None:
            stream = list(chunks([data]))
            stream[0].include_dicom_objects = True
            stub.TriageStream(iter(stream), timeout=300)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, grpc_studies))
        grpc_s = time.perf_counter() - start
        channel.close()
        cmd = [sys.executable, "-m", "triage_tools.cli", "--log-level", "WARNING", "orthanc"]
        cmd += ["follow", "--orthanc", pacs.url, "--server", server.address]
        cmd += ["--state", str(work / "state"), "--start", "now", "--poll-seconds", "0.2"]
        cmd += ["--workers", str(args.workers), "--timeout", "300"]
        sidecar = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        while not (work / "state" / "since.json").exists():
            time.sleep(0.05)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            ids = list(
                pool.map(
                    lambda d: str(pacs.client.post_instance(d)["ParentStudy"]), orthanc_studies
                )
            )
        recorded: set[str] = set()
        deadline = time.monotonic() + 60 + 60 * args.studies
        while len(recorded) < len(ids) and time.monotonic() < deadline:
            for study_id in set(ids) - recorded:
                if STATUS in pacs.client.metadata(study_id):
                    recorded.add(study_id)
            time.sleep(0.1)
        orthanc_s = time.perf_counter() - start
    finally:
        if sidecar is not None:
            sidecar.terminate()
            sidecar.wait(60)
        server.stop()
        pacs.stop()
    return {
        "studies": args.studies,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "stable_age_s": args.stable_age,
        "grpc_s": grpc_s,
        "grpc_per_min": 60.0 * args.studies / grpc_s,
        "orthanc_s": orthanc_s,
        "orthanc_per_min": 60.0 * len(recorded) / orthanc_s,
        "recorded": len(recorded),
    }
