"""``triage health``: ask a server's ``grpc.health.v1`` service; exit 0 only when SERVING.

The check is the serving image's own probe (:func:`service.apps.probe.check`); this command adds
the tools' connection options (TLS, mutual TLS, a TLS name override, the bearer token). Services:
``""`` (overall), ``liveness``, ``readiness``, ``model``, ``triage.v1.Triage``.
"""

from __future__ import annotations

import argparse

from triage_tools.client_args import add_connection_arguments


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage health``."""
    add_connection_arguments(parser)
    parser.add_argument("--service", default="readiness", help="health service name (readiness)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (5)")


def run(args: argparse.Namespace) -> int:
    """0 when SERVING, 1 otherwise (the status or the error printed)."""
    from service.apps.probe import report
    from triage_tools.client import call_metadata
    from triage_tools.client_args import channel_from, token_from

    channel = channel_from(args)
    return report(
        "triage health", channel, args.service, args.timeout, call_metadata(token_from(args))
    )
