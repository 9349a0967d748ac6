"""``triage-probe``: the serving image's own health probe (``grpc.health.v1`` Check).

Exit 0 only when the named service is SERVING; 2 when the server has no service of that name
(the names it has are printed); 1 otherwise, with the status or the error on stderr. The
container HEALTHCHECK and Kubernetes exec probes run it, so it ships with the serving install
(which has no tools package); ``triage health`` is the same check with the tools' full
connection options. Services: ``""`` (overall), ``liveness``, ``readiness``,
``model``, ``triage.v1.Triage``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(
    channel: grpc.Channel,
    service: str,
    timeout: float,
    metadata: Sequence[tuple[str, str]] = (),
) -> str:
    """The serving status name of ``service`` (``SERVING``, ``NOT_SERVING``...).

    Raises ``grpc.RpcError`` when the server cannot be asked.
    """
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=metadata
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def report(
    prog: str,
    channel: grpc.Channel,
    service: str,
    timeout: float,
    metadata: Sequence[tuple[str, str]] = (),
) -> int:
    """Check ``service``, print its status (or the error, on stderr); 0 only when SERVING.

    An unknown service name is a refusal of ``--service`` (exit 2), with the names the server
    has when it lists them.
    """
    try:
        status = check(channel, service, timeout, metadata)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            known = exc.details() or f"the server has no health service {service!r}"
            print(f"{prog}: --service {service!r}: {known}", file=sys.stderr)
            return 2
        print(f"{prog}: {exc.code().name}: {exc.details() or 'no detail'}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    print(f"{service or '(overall)'}: {status}")
    return 0 if status == "SERVING" else 1


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage-probe``."""
    parser.add_argument(
        "--server", default="127.0.0.1:50051", help="HOST:PORT of the triage server"
    )
    parser.add_argument("--service", default="readiness", help="health service name")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (5)")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA bundle: use TLS and verify the server")


def run(args: argparse.Namespace) -> int:
    """0 when SERVING, 1 otherwise."""
    if args.tls_ca is None:
        channel = grpc.insecure_channel(args.server)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=args.tls_ca.read_bytes())
        channel = grpc.secure_channel(args.server, credentials)
    token = os.environ.get("TRIAGE_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return report("triage-probe", channel, args.service, args.timeout, metadata)


def main(argv: Sequence[str] | None = None) -> int:
    """``triage-probe [--server HOST:PORT] [--service NAME]``."""
    parser = argparse.ArgumentParser(prog="triage-probe", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
