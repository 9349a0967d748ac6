"""Crash-durability check of the worklist: SIGKILL the server mid-stream, restart, audit.

One round: start ``triage serve`` as a child process on a worklist file; ``submitters``
threads send unique small chest studies as fast as the server answers; once enough results
are acknowledged the server is killed with SIGKILL; it is restarted on the same file, and the
store is audited:

- every study a client saw acknowledged is in the worklist exactly once (``lost``,
  ``duplicated``);
- every item of an unacknowledged study is whole: its stored result parses, its audit
  history starts with ``queued`` and its last audit entry's snapshot is the item as stored
  (state, priority, result), written in the same transaction (``half_written``);
- re-sending an acknowledged study after the restart replays the stored result and adds no
  item (``replay_failures``).

Used by the test suite (one round) and by ``triage bench durability --rounds N``.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from service._proto.triage.v1 import triage_pb2, triage_pb2_grpc
from service.worklist.store import STATES, SqliteWorklistStore
from triage_tools.serve_process import ServeProcess

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")


def synthetic_study(seed: int, size: int = 192) -> tuple[str, bytes]:
    """(StudyInstanceUID, Part-10 bytes) of a small synthetic frontal chest CR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((xx - 0.3) / 0.12) ** 2 + ((yy - 0.45) / 0.25) ** 2))
    lungs += np.exp(-(((xx - 0.7) / 0.12) ** 2 + ((yy - 0.45) / 0.25) ** 2))
    image = 0.8 - 0.5 * lungs + 0.03 * rng.standard_normal((size, size))
    pixels = (np.clip(image, 0, 1) * 4095).astype(np.uint16)
    study = str(generate_uid(entropy_srcs=["durability", str(seed), "study"]))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["durability", str(seed), "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["durability", str(seed), "series"])
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientName, ds.PatientID = "Durability^Test", f"DUR{seed:06d}"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return study, buffer.getvalue()


@dataclass
class RoundResult:
    """What one kill-and-restart round found."""

    acknowledged: int = 0
    attempted: int = 0
    lost: int = 0
    duplicated: int = 0
    half_written: int = 0
    replay_failures: int = 0
    unacknowledged_but_stored: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No lost, duplicated, half-written or non-replayed result."""
        return not (self.lost or self.duplicated or self.half_written or self.replay_failures)


def _serve(bundle: Path, db: Path) -> ServeProcess:
    """A ready server on ``db``."""
    server = ServeProcess(
        ["--bundle", str(bundle), "--set", f"worklist.path={db}", "--set",
         "inference.warmup_runs=1"]
    )  # fmt: skip
    server.wait_ready()
    return server


def run_round(
    bundle: Path,
    workdir: Path,
    *,
    submitters: int = 8,
    kill_after_acks: int = 24,
    seed_base: int = 0,
) -> RoundResult:
    """One kill-and-restart round on a fresh worklist file under ``workdir``."""
    db = workdir / f"worklist-{seed_base}.db"
    result = RoundResult()
    acked: dict[str, int] = {}  # study UID -> seed, for re-sending after the restart
    attempted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(seed_base, seed_base + 1_000_000))
    server = _serve(bundle, db)

    def submitter() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = triage_pb2_grpc.TriageStub(channel)  # type: ignore[no-untyped-call]
            while not stop.is_set():
                with lock:
                    seed = next(counter)
                uid, data = synthetic_study(seed)
                with lock:
                    attempted.append(uid)
                try:
                    reply = stub.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
                except grpc.RpcError:
                    return  # the server is gone: this study was not acknowledged
                if reply.study_instance_uid != uid or not reply.worklist_item_id:
                    with lock:
                        result.notes.append("an acknowledged result lacks its worklist item")
                with lock:
                    acked[uid] = seed

    threads = [threading.Thread(target=submitter) for _ in range(submitters)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(acked) < kill_after_acks and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()
    stop.set()
    for t in threads:
        t.join(60)

    restarted = _serve(bundle, db)
    try:
        store = SqliteWorklistStore(db)
        items = store.list_items(states=STATES, limit=1_000_000)
        per_study = Counter(item.study_uid for item in items)
        acked_set = set(acked)
        result.acknowledged, result.attempted = len(acked_set), len(set(attempted))
        result.lost = sum(1 for uid in acked_set if per_study[uid] == 0)
        result.duplicated = sum(1 for n in per_study.values() if n > 1)
        for item in items:
            history = store.history(item.item_id)
            last = history[-1].item if history else None
            try:
                triage_pb2.TriageResult.FromString(item.result)
                whole = (
                    history[0].action == "queued"
                    and last is not None
                    and (last.state, last.priority, last.result)
                    == (item.state, item.priority, item.result)
                )
            except Exception:  # a result that does not parse is half-written
                whole = False
            result.half_written += not whole
        result.unacknowledged_but_stored = sum(1 for uid in per_study if uid not in acked_set)
        store.close()
        # Re-sending acknowledged studies replays them and adds nothing.
        with grpc.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            stub = triage_pb2_grpc.TriageStub(channel)  # type: ignore[no-untyped-call]
            for uid in sorted(acked_set)[:8]:
                _, data = synthetic_study(acked[uid])
                reply = stub.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
                result.replay_failures += not reply.replayed
        store = SqliteWorklistStore(db)
        after = Counter(i.study_uid for i in store.list_items(states=STATES, limit=1_000_000))
        result.duplicated = max(result.duplicated, sum(1 for n in after.values() if n > 1))
        store.close()
    finally:
        restarted.stop()
    return result
