"""``triage health``: ask a server's ``grpc.health.v1`` service; exit 0 only when SERVING.

Used by the container HEALTHCHECK and by orchestrators without a native gRPC probe. Services:
``""`` (overall), ``liveness``, ``readiness``, ``model``, ``triage.v1.Triage``.
"""

from __future__ import annotations

import argparse
import sys

from triage_tools.client_args import add_connection_arguments


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage health``."""
    add_connection_arguments(parser)
    parser.add_argument("--service", default="readiness", help="health service name")
    parser.add_argument("--timeout", type=float, default=5.0)


def run(args: argparse.Namespace) -> int:
    """0 when SERVING, 1 otherwise (the status or the error printed)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from triage_tools.client import call_metadata
    from triage_tools.client_args import channel_from, token_from

    channel = channel_from(args)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=args.service),
            timeout=args.timeout,
            metadata=call_metadata(token_from(args)),
        )
    except grpc.RpcError as exc:
        print(f"triage health: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.service or '(overall)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
