"""dcmtk and dicom3tools as real DICOM peers for the tests: storescu, echoscu, storescp, dciodvfy.

Each test starts the peers it needs on loopback with ports the OS hands out and stops them.
:func:`require` skips a test loudly when a tool is not installed (``.ci/run`` installs dcmtk and
dicom3tools with apt-get on CI; a skip there means the package could not be installed).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

DCMTK = ("storescu", "echoscu", "storescp")


def require(*tools: str) -> None:
    """Skip the calling test, saying so loudly, when one of ``tools`` is not installed."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"REAL PEER MISSING: {', '.join(missing)} not installed (Debian packages dcmtk / "
            "dicom3tools; .ci/run installs them): this DICOM test cannot run without it"
        )


def free_port() -> int:
    """A TCP port the OS says is free on loopback (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


#: storescu's option proposing a compressed transfer syntax (with the uncompressed ones): it
#: proposes only uncompressed syntaxes otherwise, and cannot convert compressed files to them.
PROPOSE = {
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.1.99": "-xd",
}


def proposal(path: Path) -> list[str]:
    """The storescu option that proposes ``path``'s transfer syntax (none if uncompressed)."""
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return [PROPOSE[syntax]] if syntax in PROPOSE else []


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling: str = "MODALITY",
    called: str = "CXRTRIAGE",
    required_only: bool = True,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu sending ``files`` (of one transfer syntax) in one association (``-R``:
    only the contexts the files need, which dcmtk 3.6.7 needs to send anything beyond its
    default list, e.g. an SR), proposing the files' own transfer syntax."""
    cmd = ["storescu", "-v", "-aet", calling, "-aec", called, *proposal(files[0])]
    if required_only:
        cmd.append("-R")
    cmd += ["127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def echoscu(
    port: int, *, calling: str = "MODALITY", called: str = "CXRTRIAGE"
) -> subprocess.CompletedProcess[str]:
    """dcmtk's echoscu (C-ECHO)."""
    cmd = ["echoscu", "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@dataclass
class StoreSCP:
    """A running dcmtk storescp writing every object it receives to ``folder``."""

    port: int
    folder: Path
    ae_title: str
    process: subprocess.Popen[bytes] | None = None
    options: tuple[str, ...] = ()  # more storescp options (e.g. "+tls", KEY, CERT: DICOM TLS)

    def received(self) -> list[Path]:
        """Files received so far (one per C-STORE: ``+uf`` names each uniquely)."""
        return sorted(p for p in self.folder.iterdir() if p.is_file() and ".tmp" not in p.name)

    def by_uid(self) -> Counter[str]:
        """Receipts per SOP Instance UID."""
        return Counter(
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.received()
        )

    def wait_for(self, count: int, timeout: float) -> list[Path]:
        """Block until ``count`` objects arrived; the files (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.received()
            if len(files) >= count:
                return files
            time.sleep(0.05)
        raise AssertionError(f"{len(self.received())} of {count} objects arrived in {timeout} s")


@contextmanager
def storescp(folder: Path, port: int | None = None, ae_title: str = "PACS") -> Iterator[StoreSCP]:
    """dcmtk's storescp on loopback (any storage class, any transfer syntax it knows)."""
    folder.mkdir(parents=True, exist_ok=True)
    scp = StoreSCP(port or free_port(), folder, ae_title)
    scp.process = start_storescp(scp)
    try:
        yield scp
    finally:
        stop_storescp(scp)


def start_storescp(scp: StoreSCP) -> subprocess.Popen[bytes]:
    """Start (or restart) ``scp``'s process and wait until it listens."""
    cmd = ["storescp", "--promiscuous", "+xa", "+uf", "-aet", scp.ae_title]
    cmd += [*scp.options, "-od", str(scp.folder), str(scp.port)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scp.process = process
    wait_port(scp.port)
    return process


def stop_storescp(scp: StoreSCP) -> None:
    """Stop ``scp``'s process."""
    if scp.process is not None and scp.process.poll() is None:
        scp.process.terminate()
        try:
            scp.process.wait(10)
        except subprocess.TimeoutExpired:
            scp.process.kill()
            scp.process.wait(10)
    scp.process = None


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dicom3tools' dciodvfy reports for ``path``."""
    done = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
