"""``triage orthanc config``: write a working Orthanc configuration for a triage server.

Writes ``OUT/orthanc.json`` (ports, AE title, StableAge, the ``triage`` DICOM modality of the
plain DICOM route, the UserMetadata the sidecar records, optionally the Python plugin),
``OUT/storage/`` and ``OUT/triage-dicom.toml`` (the ``triage serve`` configuration of the
DICOM route: its SCP and Orthanc as the destination of the results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage orthanc config``."""
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument(
        "--triage-server",
        default="127.0.0.1:50051",
        help="HOST:PORT of the triage gRPC server (printed in the follow command)",
    )
    parser.add_argument(
        "--triage-dicom",
        default="127.0.0.1:11112",
        help="HOST:PORT of triage's DICOM Storage SCP, the `triage` modality of Orthanc",
    )
    parser.add_argument("--triage-ae-title", default="CXRTRIAGE", help="triage's AE title")
    parser.add_argument("--http-port", type=int, default=8042, help="Orthanc's HTTP port (8042)")
    parser.add_argument("--dicom-port", type=int, default=4242, help="Orthanc's DICOM port (4242)")
    parser.add_argument("--ae-title", default="ORTHANC", help="Orthanc's AE title (ORTHANC)")
    parser.add_argument(
        "--stable-age",
        type=int,
        default=10,
        help="seconds without a new instance before a study is stable and triaged (10)",
    )
    parser.add_argument(
        "--storage", type=Path, help="Orthanc's storage and index folder (default OUT/storage)"
    )
    parser.add_argument(
        "--remote-access",
        action="store_true",
        help="let other hosts use Orthanc's HTTP API (off: loopback only; set up auth first)",
    )
    parser.add_argument(
        "--dicom-autoroute",
        action="store_true",
        help="plain DICOM route without a sidecar: a Lua script forwards each stable study's "
        "CR/DX instances to triage's SCP once (use this or `triage orthanc follow`, not both)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        type=Path,
        help="an Orthanc plugin (.so) or plugin folder to load (repeatable), e.g. "
        "/usr/share/orthanc/plugins",
    )


def _refuse(message: str) -> int:
    print(f"triage orthanc config: {message}", file=sys.stderr)
    return 2


def _host_port(flag: str, value: str) -> tuple[str, int] | str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{flag} {value!r} is not HOST:PORT"
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    """Write the files and print the commands that start both."""
    from integrations.orthanc.config import OrthancSetup, write_setup

    server = _host_port("--triage-server", args.triage_server)
    dicom = _host_port("--triage-dicom", args.triage_dicom)
    for parsed in (server, dicom):
        if isinstance(parsed, str):
            return _refuse(parsed)
    assert not isinstance(dicom, str)
    for flag, port in (("--http-port", args.http_port), ("--dicom-port", args.dicom_port)):
        if not 0 < port < 65536:
            return _refuse(f"{flag} {port} is not a TCP port")
    if args.stable_age < 1:
        return _refuse("--stable-age must be at least 1 second")
    if not 0 < len(args.ae_title) <= 16 or not 0 < len(args.triage_ae_title) <= 16:
        return _refuse("--ae-title and --triage-ae-title must be 1 to 16 characters")
    for plugin in args.plugin:
        if not plugin.exists():
            return _refuse(f"--plugin {plugin}: no such file or folder")
    out = args.out.resolve()
    setup = OrthancSetup(
        storage=(args.storage or out / "storage").resolve(),
        http_port=args.http_port,
        dicom_port=args.dicom_port,
        ae_title=args.ae_title,
        stable_age=args.stable_age,
        triage_dicom_host=dicom[0],
        triage_dicom_port=dicom[1],
        triage_ae_title=args.triage_ae_title,
        remote_access=args.remote_access,
        plugins=tuple(str(p.resolve()) for p in args.plugin),
        autoroute_lua=str(out / "triage-autoroute.lua") if args.dicom_autoroute else "",
    )
    try:
        orthanc_json, triage_toml = write_setup(setup, out)
    except OSError as exc:
        return _refuse(f"--out {args.out}: {exc.strerror}")
    print(f"wrote {orthanc_json} and {triage_toml}")
    print("start Orthanc:       Orthanc " + str(orthanc_json))
    print(
        f"start the sidecar:   triage orthanc follow --orthanc http://127.0.0.1:{args.http_port} "
        f"--server {args.triage_server} --state {out / 'sidecar-state'}"
    )
    print(f"DICOM route:         triage serve --bundle BUNDLE --config {triage_toml}")
    return 0
