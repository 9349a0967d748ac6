"""A real Orthanc (Debian package ``orthanc``) and the sidecar as child processes for the tests.

:func:`require_orthanc` skips a test loudly when ``/usr/sbin/Orthanc`` is absent (``.ci/run``
installs it with apt-get; a skip there means the package could not be installed). Orthanc runs
on free loopback ports with its storage in the test's temporary folder and is stopped after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest

from integrations.orthanc.metadata import STATUS
from integrations.orthanc.process import OrthancProcess, orthanc_binary
from integrations.orthanc.rest import OrthancClient
from tests.helpers.dcmtk import storescu
from triage_tools.serve_process import ServeProcess

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
ROOT = Path(__file__).resolve().parents[2]


def require_orthanc() -> None:
    """Skip the calling test, saying so loudly, when Orthanc is not installed."""
    if orthanc_binary() is None:
        pytest.skip(
            "REAL PEER MISSING: /usr/sbin/Orthanc not installed (Debian package orthanc; "
            ".ci/run installs it): this Orthanc integration test cannot run without it"
        )


@contextmanager
def orthanc(work: Path, **kwargs: Any) -> Iterator[OrthancProcess]:
    """A running Orthanc on free loopback ports, stopped on exit."""
    require_orthanc()
    process = OrthancProcess(work, **kwargs)
    try:
        yield process
    finally:
        process.stop()


class FixedPortServe(ServeProcess):
    """``triage serve`` on a chosen port, so a restarted server has the same address
    (:class:`ServeProcess` always asks for a free one)."""

    def __init__(self, args: Sequence[str], port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        cmd = [sys.executable, "-m", "service.apps.serve", *args, "--port", str(port)]
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        stderr = self.proc.stderr
        assert stderr is not None
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(iter(stderr.readline, "")), daemon=True
        )
        self._reader.start()
        self.port = self._wait_for_port(60.0)


def serve_on(bundle: Path, port: int, *args: str) -> FixedPortServe:
    """A ready ``triage serve`` on ``port`` (``args`` appended, e.g. ``--set`` flags)."""
    server = FixedPortServe(["--bundle", str(bundle), *args], port)
    server.wait_ready()
    return server


class Sidecar:
    """``triage orthanc follow`` as a child process with its stderr collected."""

    def __init__(self, orthanc_url: str, server: str, state: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "triage_tools.cli", "orthanc", "follow"]
        cmd += ["--orthanc", orthanc_url, "--server", server, "--state", str(state)]
        cmd += ["--start", "beginning", "--poll-seconds", "0.2", "--retry-seconds", "0.2"]
        cmd += ["--retry-max-seconds", "1", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        stderr = self.proc.stderr
        assert stderr is not None
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(iter(stderr.readline, "")), daemon=True
        )
        self._reader.start()

    def count(self, event: str) -> int:
        """Log lines so far carrying ``event``."""
        return sum(f'"event": "{event}"' in line for line in list(self.lines))

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        return int(self.proc.returncode)


def wait_until_recorded(
    client: OrthancClient, study_ids: Iterable[str], timeout: float
) -> dict[str, dict[str, str]]:
    """Block until every study holds ``triage-status``; their metadata (AssertionError)."""
    wanted = set(study_ids)
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        seen = {s: client.metadata(s) for s in wanted}
        if all(STATUS in m for m in seen.values()):
            return seen
        time.sleep(0.2)
    missing = sum(STATUS not in m for m in seen.values())
    raise AssertionError(f"{missing} of {len(wanted)} studies not recorded in {timeout} s")


def result_kinds(client: OrthancClient, study_id: str) -> Counter[str]:
    """The study's instances by kind: ``SR``, ``SC`` (Secondary Capture), ``SEG``, or the
    series Modality of anything else."""
    kinds: Counter[str] = Counter()
    for series in client.get_json(f"/studies/{study_id}/series"):
        modality = str(series["MainDicomTags"].get("Modality", ""))
        for instance in series["Instances"]:
            if modality in ("SR", "SEG"):
                kinds[modality] += 1
            elif client.instance_tags(instance).get("SOPClassUID") == SC_STORAGE:
                kinds["SC"] += 1
            else:
                kinds[modality] += 1
    return kinds


def stable_after(client: OrthancClient, seconds: float) -> None:
    """Wait until Orthanc's change log has not grown for ``seconds``."""
    last, since = client.last_change(), time.monotonic()
    while time.monotonic() - since < seconds:
        time.sleep(0.2)
        now = client.last_change()
        if now != last:
            last, since = now, time.monotonic()


def study_id_of(client: OrthancClient, study_instance_uid: str, timeout: float = 10.0) -> str:
    """Orthanc's id of the study with ``study_instance_uid`` (``/tools/lookup``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = json.loads(
            client.request("POST", "/tools/lookup", study_instance_uid.encode(), "text/plain")
        )
        for entry in found:
            if entry["Type"] == "Study":
                return str(entry["ID"])
        time.sleep(0.1)
    raise AssertionError("Orthanc does not hold the study")


def storescu_to(port: int, files: Sequence[Path]) -> None:
    """dcmtk's storescu sends ``files`` to Orthanc's DICOM port, one association per transfer
    syntax (AssertionError when storescu fails)."""
    by_syntax: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        by_syntax.setdefault(syntax, []).append(path)
    for group in by_syntax.values():
        done = storescu(port, group, called="ORTHANC")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
