"""Orthanc as a child process on loopback: for the tests, ``triage bench orthanc`` and the
screenshot script. Start it on free ports with a temporary storage folder, wait until its REST
API answers, stop it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

from integrations.orthanc.config import OrthancSetup, orthanc_config
from integrations.orthanc.rest import OrthancClient, OrthancError

ORTHANC = "/usr/sbin/Orthanc"


def orthanc_binary() -> str | None:
    """The Orthanc executable (the Debian package's, or one on PATH), or None."""
    if Path(ORTHANC).exists():
        return ORTHANC
    return shutil.which("Orthanc")


def free_port() -> int:
    """A TCP port the OS says is free on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancProcess:
    """One Orthanc child process; ``url`` is its REST API."""

    def __init__(
        self,
        work: Path,
        *,
        stable_age: int = 1,
        triage_dicom_port: int = 11112,
        ae_title: str = "ORTHANC",
        start_timeout: float = 30.0,
        config_file: Path | None = None,
    ) -> None:
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError("Orthanc is not installed (Debian package orthanc)")
        work.mkdir(parents=True, exist_ok=True)
        if config_file is not None:  # e.g. written by `triage orthanc config`
            written = json.loads(config_file.read_text())
            self.setup = OrthancSetup(
                storage=Path(written["StorageDirectory"]),
                http_port=int(written["HttpPort"]),
                dicom_port=int(written["DicomPort"]),
                ae_title=str(written["DicomAet"]),
                stable_age=int(written["StableAge"]),
            )
            self.config_path = config_file
        else:
            self.setup = OrthancSetup(
                storage=work / "storage",
                http_port=free_port(),
                dicom_port=free_port(),
                ae_title=ae_title,
                stable_age=stable_age,
                triage_dicom_port=triage_dicom_port,
            )
            self.config_path = work / "orthanc.json"
            self.config_path.write_text(json.dumps(orthanc_config(self.setup), indent=2))
        self.setup.storage.mkdir(parents=True, exist_ok=True)
        self.log_path = work / "orthanc.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, str(self.config_path)], stdout=self._log, stderr=subprocess.STDOUT
        )
        self.client = OrthancClient(self.url, timeout=30)
        self._wait(start_timeout)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.setup.http_port}"

    @property
    def dicom_port(self) -> int:
        """Orthanc's DICOM port."""
        return self.setup.dicom_port

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "Orthanc exited early:\n" + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                self.client.system()
                return
            except OrthancError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer on its REST port")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
