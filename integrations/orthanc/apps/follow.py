"""``triage orthanc follow``: the sidecar that triages every stable chest study of an Orthanc.

Runs until SIGTERM/SIGINT; a SIGKILL loses nothing (see :mod:`integrations.orthanc.sidecar`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from triage_tools.client_args import add_connection_arguments, token_from


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage orthanc follow``."""
    parser.add_argument(
        "--orthanc", required=True, help="Orthanc's REST API, e.g. http://127.0.0.1:8042"
    )
    parser.add_argument(
        "--orthanc-user",
        help="HTTP user of Orthanc's REST API (password from env TRIAGE_ORTHANC_PASSWORD)",
    )
    add_connection_arguments(parser)
    parser.add_argument(
        "--state",
        type=Path,
        required=True,
        help="state folder (change sequence, studies, results not yet posted); keep it",
    )
    parser.add_argument("--workers", type=int, default=2, help="studies triaged at once (2)")
    parser.add_argument(
        "--poll-seconds", type=float, default=1.0, help="wait between polls of /changes (1)"
    )
    parser.add_argument(
        "--retry-seconds",
        type=float,
        default=1.0,
        help="first wait before retrying a study (doubled each time) (1)",
    )
    parser.add_argument(
        "--retry-max-seconds", type=float, default=60.0, help="longest wait between retries (60)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="deadline of one triage call, seconds (120)"
    )
    parser.add_argument(
        "--calling-ae-title", default="", help="AE title sent with each study (routing rules)"
    )
    parser.add_argument(
        "--start",
        choices=("now", "beginning"),
        default="now",
        help="on a first start (empty state): only studies that become stable from now on "
        "(now), or every study Orthanc's change log holds (beginning)",
    )


def _refuse(message: str) -> int:
    print(f"triage orthanc follow: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Follow Orthanc until a signal."""
    if not str(args.orthanc).startswith(("http://", "https://")):
        return _refuse(f"--orthanc {args.orthanc!r} is not an http(s) URL")
    if args.workers < 1:
        return _refuse("--workers must be at least 1")
    for flag, value in (("--poll-seconds", args.poll_seconds), ("--timeout", args.timeout)):
        if value <= 0:
            return _refuse(f"{flag} must be above 0")
    if args.retry_seconds <= 0 or args.retry_max_seconds < args.retry_seconds:
        return _refuse("--retry-seconds must be above 0 and at most --retry-max-seconds")
    try:
        args.state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _refuse(f"--state {args.state}: {exc.strerror}")

    from integrations.orthanc.rest import OrthancClient
    from integrations.orthanc.sidecar import FollowOptions, Sidecar
    from integrations.orthanc.state import StateDir
    from service._proto.triage.v1 import triage_pb2_grpc
    from triage_tools.client_args import channel_from

    orthanc = OrthancClient(
        args.orthanc,
        username=args.orthanc_user,
        password=os.environ.get("TRIAGE_ORTHANC_PASSWORD"),
    )
    options = FollowOptions(
        workers=args.workers,
        poll_seconds=args.poll_seconds,
        retry_seconds=args.retry_seconds,
        retry_max_seconds=args.retry_max_seconds,
        call_timeout=args.timeout,
        token=token_from(args),
        calling_ae_title=args.calling_ae_title,
        start=args.start,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with channel_from(args) as channel:
        stub = triage_pb2_grpc.TriageStub(channel)  # type: ignore[no-untyped-call]
        sidecar = Sidecar(orthanc, stub, StateDir(args.state), options)
        print(f"triage orthanc follow: following {args.orthanc}", file=sys.stderr, flush=True)
        sidecar.run(stop)
    return 0
