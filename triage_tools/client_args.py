"""Command-line options shared by every gRPC client command (submit, worklist, bench).

Kept free of grpc imports so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--server, --token and the TLS options."""
    parser.add_argument(
        "--server", default="127.0.0.1:50051", help="HOST:PORT of the triage server"
    )
    parser.add_argument("--token", help="bearer token (or env TRIAGE_TOKEN)")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA bundle: use TLS and verify the server")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM client key (mutual TLS)")
    parser.add_argument(
        "--server-name", help="TLS server name to verify, when it differs from HOST"
    )


def token_from(args: argparse.Namespace) -> str | None:
    """The bearer token from --token or TRIAGE_TOKEN."""
    token: str | None = args.token or os.environ.get("TRIAGE_TOKEN")
    return token


def channel_from(args: argparse.Namespace) -> grpc.Channel:
    """A channel configured by :func:`add_connection_arguments`' options."""
    from triage_tools.client import ChannelOptions, open_channel

    return open_channel(
        ChannelOptions(
            args.server,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            server_name=args.server_name,
        )
    )
