"""``triage serve``: run the gRPC triage service until SIGTERM/SIGINT, then drain and exit.

Configuration keys, their environment variables and precedence are documented in
:mod:`service.config`. Also runnable as ``python -m service.apps.serve --bundle B``.

``--policy FILE`` (key ``policy.file``) loads a calibrated policy written by ``triage
calibrate`` (refused if it was made for another bundle); SIGHUP re-reads it and swaps it in
without dropping a request (a file that fails to load keeps the old policy and logs
``policy_reload_failed``).

Every log line of the server's life cycle (``listening``, ``ready``, ``stopped``) carries
``torch_loaded``: whether ``torch`` is in ``sys.modules`` (it must stay false; the serving path
imports neither torch nor the train-time packages).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from service.config import ConfigError, load_config, parse_set_flags
from triage_common.logging import configure_logging, get_logger


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage serve``."""
    parser.add_argument("--bundle", type=Path, help="model bundle folder (key: bundle)")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument(
        "--port", type=int, help="port to listen on (server.port; 0: any free port)"
    )
    parser.add_argument("--host", help="address to bind (server.host; default 127.0.0.1)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (metrics.port; 0: off)")
    parser.add_argument("--log-level", help="log level (logging.level)")
    parser.add_argument(
        "--policy",
        type=Path,
        help="calibrated policy file from `triage calibrate` (policy.file); SIGHUP reloads it",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="set any configuration key (repeatable), e.g. --set inference.max_batch=16",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = dict(parse_set_flags(args.set))
    for key, value in (
        ("bundle", None if args.bundle is None else str(args.bundle)),
        ("server.port", args.port),
        ("server.host", args.host),
        ("metrics.port", args.metrics_port),
        ("logging.level", args.log_level),
        ("policy.file", None if args.policy is None else str(args.policy)),
    ):
        if value is not None:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    """Load the configuration, start the server, block until a signal, drain, exit."""
    try:
        config = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"triage serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.logging.level, json_output=config.logging.json)
    log = get_logger("service.serve")
    from service.rpc.server import create_server
    from triage_common.bundle_format import BundleError
    from triage_common.heap import limit_arenas, retain_freed_memory

    limit_arenas()  # freed memory in one arena, where an idle trim can return it
    retain_freed_memory()  # request buffers of several MB: no page faults for each one

    try:
        server, port = create_server(config)
        if config.policy.file:
            current = server.policy.current()
            log.info(
                "policy_loaded",
                path=config.policy.file,
                policy_version=current.version,
                defer_cost=current.defer_cost,
                ood_threshold=current.ood_threshold,
            )
    except (BundleError, ValueError, OSError) as exc:
        log.error("startup_failed", error=type(exc).__name__, detail=str(exc))
        print(f"triage serve: {exc}", file=sys.stderr)
        return 1
    stop_requested = threading.Event()
    reload_requested = threading.Event()
    wake = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("signal", signal=signal.Signals(signum).name)
        stop_requested.set()
        wake.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        reload_requested.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hangup)
    server.start()
    print(f"triage serve: listening on {config.server.host}:{port}", file=sys.stderr, flush=True)
    while True:
        wake.wait(0.5)
        wake.clear()
        if stop_requested.is_set():
            break
        if reload_requested.is_set():
            reload_requested.clear()
            _reload_policy(server.policy, log)
        if server.wait_for_termination(0):
            break
        try:
            server.wait_ready(0)
        except RuntimeError:
            server.stop(0).wait(10)
            return 1
    server.stop().wait()
    return 0


def _reload_policy(policy: object, log: Any) -> None:
    """SIGHUP: re-read the calibrated policy file (the source logs the outcome)."""
    reload = getattr(policy, "reload", None)
    if reload is None:
        log.warning("sighup_ignored", reason="no policy.file configured: nothing to reload")
        return
    reload()


def main(argv: list[str] | None = None) -> int:
    """``python -m service.apps.serve ...``."""
    parser = argparse.ArgumentParser(prog="triage serve", description="run the gRPC triage service")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
