"""``triage serve`` as a child process: start, read its port, wait until ready, stop or kill.

Used where a real server process is the point: the demo (a clean SIGTERM stop) and the
durability soak (SIGKILL mid-stream). The child inherits the environment minus ``TRIAGE_*``
variables, so only the arguments given here configure it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import grpc


class ServeProcess:
    """One ``triage serve ARGS... --port 0`` child with its stderr collected line by line."""

    def __init__(
        self,
        args: Sequence[str],
        start_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        child_env.update(env or {})
        cmd = [sys.executable, "-m", "service.apps.serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(cmd, env=child_env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        stderr = self.proc.stderr
        assert stderr is not None
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(iter(stderr.readline, "")), daemon=True
        )
        self._reader.start()
        self.port = self._wait_for_port(start_timeout)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if "listening on" in line:
                    return int(line.rsplit(":", 1)[1])
            if self.proc.poll() is not None:
                raise RuntimeError("triage serve exited early:\n" + "".join(self.lines[-20:]))
            time.sleep(0.05)
        raise RuntimeError("triage serve did not report its port")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the readiness health service says SERVING (model loaded, warmed up)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(service="readiness"), timeout=2
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise RuntimeError("triage serve did not become ready")

    def count(self, event: str) -> int:
        """Log lines so far carrying ``event``."""
        return sum(f'"event": "{event}"' in line for line in list(self.lines))

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has ended and all its stderr is in ``lines``."""
        status = self.proc.wait(timeout)
        self._reader.join(10)
        return int(status)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful drain) and wait; SIGKILL if it does not exit. The exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)
