"""The sidecar's durable state, one small file per fact, each written atomically.

``DIR/since.json``
    the last ``/changes`` sequence number whose StableStudy entries are all *queued*;
``DIR/studies/<orthanc-id>.json``
    one study: ``pending`` (to triage), ``posting`` (result saved, being posted), or a final
    status (``done``, ``not-eligible``, ``rejected``, ``gone``);
``DIR/results/<orthanc-id>/``
    a result between the gRPC reply and the end of posting: its DICOM objects and
    ``result.json`` (written last: the folder counts only once it is there).

Every write goes through :func:`triage_common.atomic.atomic_write_bytes` (temporary file,
fsync, rename, fsync of the folder), so a SIGKILL leaves each file either old or new. The
result is saved before anything is posted, so a restart posts the *same* objects (same SOP
Instance UIDs, which Orthanc stores once) and never asks the server for a second result.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from triage_common.atomic import atomic_write_bytes, atomic_write_text

PENDING, POSTING = "pending", "posting"
DONE, NOT_ELIGIBLE, REJECTED, GONE = "done", "not-eligible", "rejected", "gone"
FINAL = frozenset({DONE, NOT_ELIGIBLE, REJECTED, GONE})
_ID = re.compile(r"^[0-9a-f-]{1,100}$")


@dataclass
class StudyState:
    """What the sidecar knows of one Orthanc study."""

    status: str = PENDING
    attempts: int = 0
    reason: str = ""


@dataclass(frozen=True)
class SavedObject:
    """One result object saved before posting."""

    kind: str
    sop_instance_uid: str
    data: bytes


@dataclass(frozen=True)
class SavedResult:
    """A result saved between the gRPC reply and the end of posting."""

    summary: dict[str, Any]
    objects: tuple[SavedObject, ...] = field(default=())


class StateDir:
    """The state folder (created if missing). Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._studies = self.root / "studies"
        self._results = self.root / "results"
        self._studies.mkdir(parents=True, exist_ok=True)
        self._results.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- the change sequence -------------------------------------------------------------
    def since(self) -> int | None:
        """The persisted change sequence, or None on a first start."""
        path = self.root / "since.json"
        if not path.exists():
            return None
        return int(json.loads(path.read_text())["since"])

    def set_since(self, seq: int) -> None:
        """Persist ``seq`` (every StableStudy up to it is queued)."""
        atomic_write_text(self.root / "since.json", json.dumps({"since": int(seq)}))

    # -- studies -------------------------------------------------------------------------
    def _study_path(self, study_id: str) -> Path:
        if not _ID.match(study_id):
            raise ValueError("not an Orthanc resource id")
        return self._studies / f"{study_id}.json"

    def study(self, study_id: str) -> StudyState | None:
        """The study's state, or None when never seen."""
        path = self._study_path(study_id)
        if not path.exists():
            return None
        return StudyState(**json.loads(path.read_text()))

    def put_study(self, study_id: str, state: StudyState) -> None:
        """Persist the study's state."""
        with self._lock:
            atomic_write_text(self._study_path(study_id), json.dumps(asdict(state)))

    def enqueue(self, study_id: str) -> bool:
        """Mark the study pending unless it is known already; True when newly queued."""
        with self._lock:
            path = self._study_path(study_id)
            if path.exists():
                return False
            atomic_write_text(path, json.dumps(asdict(StudyState())))
            return True

    def open_studies(self) -> dict[str, StudyState]:
        """Studies still to finish (pending or posting), by Orthanc id."""
        out: dict[str, StudyState] = {}
        for path in sorted(self._studies.glob("*.json")):
            state = StudyState(**json.loads(path.read_text()))
            if state.status not in FINAL:
                out[path.stem] = state
        return out

    def counts(self) -> dict[str, int]:
        """How many studies are in each status."""
        out: dict[str, int] = {}
        for path in self._studies.glob("*.json"):
            status = str(json.loads(path.read_text())["status"])
            out[status] = out.get(status, 0) + 1
        return out

    # -- saved results -------------------------------------------------------------------
    def save_result(self, study_id: str, result: SavedResult) -> None:
        """Write the objects, then ``result.json`` naming them (the commit point)."""
        self._study_path(study_id)  # validates the id
        folder = self._results / study_id
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        names = []
        for n, obj in enumerate(result.objects):
            name = f"{n:03d}-{obj.kind}.dcm"
            atomic_write_bytes(folder / name, obj.data)
            names.append({"file": name, "kind": obj.kind, "sop_instance_uid": obj.sop_instance_uid})
        body = {"summary": result.summary, "objects": names}
        atomic_write_text(folder / "result.json", json.dumps(body))

    def saved_result(self, study_id: str) -> SavedResult | None:
        """The saved result, or None when there is none (or it was not complete)."""
        self._study_path(study_id)
        folder = self._results / study_id
        index = folder / "result.json"
        if not index.exists():
            return None
        body = json.loads(index.read_text())
        objects = tuple(
            SavedObject(o["kind"], o["sop_instance_uid"], (folder / o["file"]).read_bytes())
            for o in body["objects"]
        )
        return SavedResult(body["summary"], objects)

    def drop_result(self, study_id: str) -> None:
        """Remove the saved result (after posting)."""
        self._study_path(study_id)
        shutil.rmtree(self._results / study_id, ignore_errors=True)
