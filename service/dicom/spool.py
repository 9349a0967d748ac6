"""The spool: instances received over DICOM, on disk before they are acknowledged.

Layout under ``dicom.spool_dir``::

    studies/<sha256 of the StudyInstanceUID>/meta.json      who sent it (calling AE title, host)
    studies/<sha256 of the StudyInstanceUID>/<sha256 of the SOP Instance UID>.dcm
    quarantine/<sha256 of the StudyInstanceUID>/...         studies whose triage kept failing

Every file is written to a ``.part`` file, fsync'd, renamed into place and its folder fsync'd, so
an instance the SCP acknowledged survives a SIGKILL or a power loss, and a half-written one is
never mistaken for an instance (``.part`` files are removed at start-up). File and folder names
are hashes: no UID appears in a path (paths reach logs when a disk fails).

Bounds (``dicom.max_study_bytes``, ``dicom.max_study_instances``, ``dicom.max_spool_bytes``) are
checked before an instance is written; past one, :class:`~service.dicom.status.SpoolFull`
(C-STORE 0xA700). The totals are recomputed from the disk at start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from service.core.types import BytesLike
from service.dicom.status import SpoolFull

META = "meta.json"
#: Where studies that keep failing are moved (``<spool_dir>/quarantine/<key>``).
QUARANTINE = "quarantine"


def key_of(uid: str) -> str:
    """The file-system name of a UID (sha256 hex)."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: BytesLike) -> None:
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class StudyMeta:
    """Who sent a spooled study (the first association that carried it)."""

    calling_ae_title: str = ""
    host: str = ""


@dataclass(frozen=True)
class SpooledStudy:
    """A study in the spool: its key, folder and sender."""

    key: str
    folder: Path
    meta: StudyMeta


class Spool:
    """The spool folder with its bounds (thread-safe)."""

    def __init__(
        self,
        root: Path,
        *,
        max_study_bytes: int,
        max_study_instances: int,
        max_total_bytes: int,
    ) -> None:
        self.root = root
        self.studies_dir = root / "studies"
        self.max_study_bytes = max_study_bytes
        self.max_study_instances = max_study_instances
        self.max_total_bytes = max_total_bytes
        self._lock = threading.Lock()
        self._sizes: dict[str, dict[str, int]] = {}  # study key -> instance file -> bytes
        self.studies_dir.mkdir(parents=True, exist_ok=True)
        self._scan()

    def _scan(self) -> None:
        for folder in self.studies_dir.iterdir():
            if not folder.is_dir():
                continue
            for part in folder.glob("*.part"):
                part.unlink(missing_ok=True)
            files = {p.name: p.stat().st_size for p in folder.glob("*.dcm")}
            if files and (folder / META).is_file():
                self._sizes[folder.name] = files
            else:  # a study folder that never got its first instance
                shutil.rmtree(folder, ignore_errors=True)

    @property
    def total_bytes(self) -> int:
        """Bytes of every spooled instance."""
        with self._lock:
            return sum(sum(files.values()) for files in self._sizes.values())

    @property
    def study_count(self) -> int:
        """Studies in the spool."""
        with self._lock:
            return len(self._sizes)

    def add(self, study_uid: str, sop_instance_uid: str, data: BytesLike, meta: StudyMeta) -> str:
        """Write one instance durably; returns the study's key. SpoolFull past a bound."""
        key, name = key_of(study_uid), key_of(sop_instance_uid) + ".dcm"
        size = len(memoryview(data).cast("B"))
        folder = self.studies_dir / key
        with self._lock:
            files = self._sizes.get(key, {})
            total = sum(sum(f.values()) for f in self._sizes.values())
            study = sum(files.values()) - files.get(name, 0)
            if name not in files and len(files) >= self.max_study_instances:
                raise SpoolFull(
                    f"the study already has {len(files)} instances, the most "
                    f"dicom.max_study_instances allows"
                )
            if study + size > self.max_study_bytes:
                raise SpoolFull(
                    f"the study would reach {study + size} bytes, above dicom.max_study_bytes "
                    f"= {self.max_study_bytes}"
                )
            if total - files.get(name, 0) + size > self.max_total_bytes:
                raise SpoolFull(
                    f"the spool holds {total} bytes; this instance would pass "
                    f"dicom.max_spool_bytes = {self.max_total_bytes}"
                )
            new_study = key not in self._sizes
            files[name] = size  # reserved now, so concurrent writers see it
            self._sizes[key] = files
        try:
            if new_study:
                folder.mkdir(parents=True, exist_ok=True)
                _write_durably(folder / META, json.dumps(meta.__dict__).encode("utf-8"))
                _fsync_dir(self.studies_dir)
            _write_durably(folder / name, data)
        except BaseException:
            with self._lock:
                files = self._sizes.get(key, {})
                files.pop(name, None)
                if not files:
                    self._sizes.pop(key, None)
            raise
        return key

    def studies(self) -> list[SpooledStudy]:
        """Every study in the spool."""
        with self._lock:
            keys = sorted(self._sizes)
        return [self.study(k) for k in keys]

    def study(self, key: str) -> SpooledStudy:
        """One spooled study."""
        folder = self.studies_dir / key
        try:
            meta = StudyMeta(**json.loads((folder / META).read_text()))
        except (OSError, ValueError, TypeError):
            meta = StudyMeta()
        return SpooledStudy(key, folder, meta)

    def instances(self, key: str) -> list[Path]:
        """The study's instance files (in name order)."""
        with self._lock:
            names = sorted(self._sizes.get(key, {}))
        return [self.studies_dir / key / n for n in names]

    def quarantine(self, key: str) -> Path:
        """Move a study out of the spool into ``quarantine/`` (kept for an operator, never
        triaged again by the service); returns its new folder."""
        folder = self.studies_dir / key
        target_dir = self.root / QUARANTINE
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / key
        n = 1
        while target.exists():  # quarantined before: keep both
            target, n = target_dir / f"{key}.{n}", n + 1
        with self._lock:
            self._sizes.pop(key, None)
            os.replace(folder, target)
            _fsync_dir(self.studies_dir)
            _fsync_dir(target_dir)
        return target

    def remove(self, key: str, files: list[Path]) -> bool:
        """Delete ``files`` of a study (those it was triaged from); the folder goes with the
        last one. True when the study is gone from the spool."""
        folder = self.studies_dir / key
        with self._lock:  # held over the deletion: a new instance of the study waits for it
            sizes = self._sizes.get(key, {})
            for path in files:
                sizes.pop(path.name, None)
            gone = not sizes
            if gone:
                self._sizes.pop(key, None)
                shutil.rmtree(folder, ignore_errors=True)
                _fsync_dir(self.studies_dir)
            else:
                for path in files:
                    path.unlink(missing_ok=True)
                _fsync_dir(folder)
        return gone
