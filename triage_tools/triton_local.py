"""A real Triton Inference Server on loopback, for the KServe tests and ``triage bench kserve``.

PyPI's ``nvidia-pytriton`` bundles a ``tritonserver`` binary (Triton 2.51, Python backend only)
but needs ``numpy<2``, which the project's environment cannot take; :func:`ensure_venv` makes it
a virtual environment of its own, once, in a cache folder (``$CXR_TRIAGE_CACHE``, else
``$XDG_CACHE_HOME/cxr-triage``, else ``~/.cache/cxr-triage``), named after a hash of
:data:`REQUIREMENTS` and the Python version so a change of either makes a new one. Creating it
takes about 40 s and 450 MB from the package index; later calls find it complete (a marker file
written last) and return at once; concurrent callers wait on a file lock.

:class:`TritonProcess` starts :mod:`triage_tools.triton_bundle_server` in that environment:
the bundle's ONNX graph under ONNX Runtime inside a function bound to Triton, served over
KServe v2 gRPC on a loopback port. It runs in its own session, so :meth:`TritonProcess.kill`
(SIGKILL to the whole group: pytriton, tritonserver, the Python backend stubs) is a server crash
as an orchestrator would see it, and a new :class:`TritonProcess` on the same port is the server
coming back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: What the PyTriton environment holds (pinned: the server must be the same everywhere).
REQUIREMENTS = ("nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime>=1.18,<2")
SERVER_SCRIPT = Path(__file__).with_name("triton_bundle_server.py")
#: The marker :func:`ensure_venv` writes once the environment is complete.
COMPLETE = ".complete"


class TritonUnavailable(RuntimeError):
    """The PyTriton environment cannot be created here, or its server does not start."""


def cache_root() -> Path:
    """Where reusable environments live (see the module docstring)."""
    explicit = os.environ.get("CXR_TRIAGE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cxr-triage"


def venv_path(root: Path | None = None) -> Path:
    """The environment's folder for the current requirements and Python version."""
    key = "\n".join((*REQUIREMENTS, f"{sys.version_info.major}.{sys.version_info.minor}"))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (root or cache_root()) / f"pytriton-{digest}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_venv(root: Path | None = None, timeout: float = 900.0) -> Path:
    """The PyTriton environment's python, creating the environment first if needed.

    Raises :class:`TritonUnavailable` with pip's last lines when it cannot be installed.
    """
    venv = venv_path(root)
    python = venv / "bin" / "python"
    with _locked(venv.with_name(venv.name + ".lock")):
        if (venv / COMPLETE).is_file() and python.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        steps = [
            [base, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise TritonUnavailable(f"{' '.join(step[:4])} failed: {exc}") from exc
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
                shutil.rmtree(venv, ignore_errors=True)
                raise TritonUnavailable(
                    f"{' '.join(step[:4])} exited with {done.returncode}:\n{tail}"
                )
        (venv / COMPLETE).write_text("\n".join(REQUIREMENTS) + "\n")
    return python


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonProcess:
    """``tritonserver`` (through PyTriton) serving ``bundle`` on ``127.0.0.1:grpc_port``."""

    def __init__(
        self,
        python: Path,
        bundle: Path,
        *,
        grpc_port: int | None = None,
        model_name: str = "cxr_triage",
        max_batch: int = 8,
        threads: int = 1,
        extra: Sequence[str] = (),
    ) -> None:
        self.grpc_port = grpc_port or free_port()
        self.model_name = model_name
        self._workdir = Path(tempfile.mkdtemp(prefix="triage-triton-"))
        self.log_path = self._workdir / "triton.log"
        cmd = [str(python), str(SERVER_SCRIPT), "--bundle", str(bundle)]
        cmd += ["--model-name", model_name, "--grpc-port", str(self.grpc_port)]
        cmd += ["--http-port", str(free_port()), "--metrics-port", str(free_port())]
        cmd += ["--max-batch", str(max_batch), "--threads", str(threads), *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIAGE_", "PYTHON"))}
        # PyTriton's workspace (sockets, a copy of tritonserver) in the folder removed by stop(),
        # rather than ~/.cache/pytriton, where every killed server would leave 22 MB behind
        env["TMPDIR"] = str(self._workdir)
        env["PYTRITON_HOME"] = str(self._workdir / "pytriton")
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the KServe v2 gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 120.0, credentials: Any = None) -> None:
        """Block until the model answers ready over gRPC (TLS with ``credentials``, a
        ``grpc.ChannelCredentials``); TritonUnavailable if it never does."""
        import grpc

        from service._proto.kserve.v2 import inference_pb2, inference_pb2_grpc

        deadline = time.monotonic() + timeout
        if credentials is None:
            opened = grpc.insecure_channel(self.address)
        else:
            opened = grpc.secure_channel(self.address, credentials)
        with opened as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            request = inference_pb2.ModelReadyRequest(name=self.model_name)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise TritonUnavailable(
                        f"the Triton server exited with {self.proc.returncode}:\n" + self.log_tail()
                    )
                try:
                    if stub.ModelReady(request, timeout=2).ready:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.kill()
        raise TritonUnavailable(
            f"the Triton server was not ready in {timeout:g} s:\n" + self.log_tail()
        )

    def freeze(self) -> None:
        """SIGSTOP the whole group: a hung server (connections stay open, nothing answers)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the whole process group (no shutdown code runs) and reap it."""
        self._signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Triton unloads and exits), SIGKILL past ``timeout``; remove the workspace.

        The Python backend also writes a small ``/tmp/folder*`` per model instance that a
        killed server cannot remove (its path is not configurable); those are left.
        """
        if self.proc.poll() is None:
            self._signal(signal.SIGCONT)  # a frozen group cannot act on SIGTERM
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._signal(signal.SIGKILL)  # anything of the group still left
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
