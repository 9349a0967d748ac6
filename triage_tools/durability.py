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

Several replicas (``--worklist-url URL --replicas N``, :func:`run_replica_round`): N servers on
loopback share one PostgreSQL worklist; clients submit distinct studies round-robin over them
while readers claim (short leases) and complete from all of them; each round one replica, at
random, is SIGKILLed at a random moment and restarted. Audited per round: no acknowledged study
lost, none stored twice, no item torn, no item held by two readers at once (from the audit
history, and from the readers' own claim and completion times), and the claims a reader left on
the killed replica expire on the database clock and return to QUEUED; acknowledged studies sent
again to any replica replay.
"""

from __future__ import annotations

import io
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def _lost_and_duplicated(per_study: Counter[str], acked: Iterable[str]) -> tuple[int, int]:
    """Acknowledged studies with no item, and studies with more than one item."""
    lost = sum(1 for uid in acked if per_study[uid] == 0)
    return lost, sum(1 for n in per_study.values() if n > 1)


def _whole(item: Any, history: list[Any], *, with_state: bool) -> bool:
    """The item's result parses and its audit history starts queued and ends at the item as
    stored (its state too when ``with_state``): otherwise it is half-written."""
    try:
        triage_pb2.TriageResult.FromString(item.result)
    except Exception:  # a result that does not parse is half-written
        return False
    last = history[-1].item if history else None
    if not history or history[0].action != "queued" or last is None:
        return False
    same = last.result == item.result and last.priority == item.priority
    return same and (not with_state or last.state == item.state)


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
        result.lost, result.duplicated = _lost_and_duplicated(per_study, acked_set)
        for item in items:
            result.half_written += not _whole(item, store.history(item.item_id), with_state=True)
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


# -- several replicas on one PostgreSQL worklist ----------------------------------------------


@dataclass
class ReplicaRoundResult:
    """What one round of the shared-database check found (``triage bench durability
    --worklist-url URL --replicas N``)."""

    killed_replica: int = 0
    kill_after_s: float = 0.0
    attempted: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    half_written: int = 0
    replay_failures: int = 0
    claims: int = 0
    double_claims: int = 0
    abandoned_leases: int = 0
    leases_not_expired: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, torn, claimed twice at once or left leased."""
        return not (
            self.lost or self.duplicated or self.half_written or self.replay_failures
            or self.double_claims or self.leases_not_expired or self.notes
        )  # fmt: skip


class Replicas:
    """``n`` ``triage serve`` replicas on loopback sharing the worklist database ``url``
    (passed in the environment, so the password is not on a command line)."""

    def __init__(self, bundle: Path, url: str, n: int) -> None:
        self.bundle, self._url = bundle, url
        self.lock = threading.Lock()
        self.procs = [self._start() for _ in range(n)]
        for proc in self.procs:
            proc.wait_ready()

    def _start(self) -> ServeProcess:
        return ServeProcess(
            ["--bundle", str(self.bundle), "--set", "inference.warmup_runs=1"],
            env={"TRIAGE_WORKLIST__URL": self._url},
        )

    def addresses(self) -> list[str]:
        """The replicas' current addresses (a restarted replica has a new port)."""
        with self.lock:
            return [p.address for p in self.procs]

    def kill_and_restart(self, index: int) -> None:
        """SIGKILL replica ``index``, start a new one in its place and wait until ready."""
        self.procs[index].kill()
        proc = self._start()
        proc.wait_ready()
        with self.lock:
            self.procs[index] = proc

    def stop(self) -> None:
        """Stop every replica (SIGTERM)."""
        for proc in self.procs:
            proc.stop()


@dataclass
class _Claim:
    item_id: str
    reader: str
    start: float  # when the claim was acknowledged (wall clock)
    end: float  # completed, or the lease's expiry (the database's clock) if sooner


def _interval_overlaps(claims: list[_Claim]) -> int:
    """Pairs of claims of one item by different readers whose holding times overlap."""
    by_item: dict[str, list[_Claim]] = {}
    for c in claims:
        by_item.setdefault(c.item_id, []).append(c)
    overlaps = 0
    for held in by_item.values():
        held.sort(key=lambda c: c.start)
        for a, b in itertools.pairwise(held):
            overlaps += a.reader != b.reader and b.start < a.end - 0.05  # clocks: same machine
    return overlaps


def _history_double_claims(history: list[Any]) -> int:
    """Claims of an item while it was already CLAIMED, from its audit history."""
    held, doubled = False, 0
    for event in history:
        if event.action == "claimed":
            doubled += held
            held = True
        elif event.action in ("released", "completed", "lease-expired"):
            held = False
    return int(doubled)


def run_replica_round(
    replicas: Replicas,
    store: Any,
    *,
    clients: int = 16,
    readers: int = 3,
    seed_base: int = 0,
    rng: random.Random,
    lease_s: float = 2.0,
    abandon: int = 3,
    duration_s: float = 4.0,
) -> ReplicaRoundResult:
    """One round: ``clients`` submit distinct studies round-robin over the replicas while
    ``readers`` claim and complete from all of them; at a random moment one replica (at
    random) is SIGKILLed and restarted, just after ``abandon`` claims made through it with a
    ``lease_s`` lease were left uncompleted (their reader died with it). ``store`` is a store
    on the same database, for the audit."""
    from service._proto.triage.v1 import worklist_pb2, worklist_pb2_grpc

    n = len(replicas.procs)
    victim = rng.randrange(n)
    kill_at = rng.uniform(0.5, duration_s * 0.6)
    result = ReplicaRoundResult(killed_replica=victim, kill_after_s=round(kill_at, 2))
    acked: dict[str, int] = {}
    attempted: set[str] = set()
    claims: list[_Claim] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(seed_base, seed_base + 1_000_000))
    channels: dict[str, grpc.Channel] = {}

    def channel(address: str) -> grpc.Channel:
        with lock:
            if address not in channels:
                channels[address] = grpc.insecure_channel(address)
            return channels[address]

    def submitter(k: int) -> None:
        turn = k
        while not stop.is_set():
            with lock:
                seed = next(counter)
            uid, data = synthetic_study(seed)
            with lock:
                attempted.add(uid)
            addresses = replicas.addresses()
            address = addresses[turn % len(addresses)]
            turn += 1
            stub = triage_pb2_grpc.TriageStub(channel(address))  # type: ignore[no-untyped-call]
            try:
                reply = stub.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
            except grpc.RpcError:
                continue  # that replica is down: not acknowledged; the next goes elsewhere
            if reply.study_instance_uid != uid or not reply.worklist_item_id:
                with lock:
                    result.notes.append("an acknowledged result lacks its worklist item")
            with lock:
                acked[uid] = seed

    def reader(j: int) -> None:
        name, turn = f"reader-{seed_base}-{j}", j
        while not stop.is_set():
            addresses = replicas.addresses()
            stub = worklist_pb2_grpc.WorklistStub(  # type: ignore[no-untyped-call]
                channel(addresses[turn % len(addresses)])
            )
            turn += 1
            try:
                item = stub.Claim(
                    worklist_pb2.ClaimRequest(reader=name, lease_seconds=lease_s), timeout=10
                )
            except grpc.RpcError:
                time.sleep(0.02)  # nothing queued, or that replica is down
                continue
            start = time.time()
            time.sleep(rng.uniform(0.0, 0.05))  # reading
            labels = [
                worklist_pb2.FinalLabel(label=f.label, present=False) for f in item.result.findings
            ]
            try:
                stub = worklist_pb2_grpc.WorklistStub(  # type: ignore[no-untyped-call]
                    channel(replicas.addresses()[turn % n])
                )
                stub.Complete(
                    worklist_pb2.CompleteRequest(
                        item_id=item.item_id, reader=name, final_labels=labels
                    ),
                    timeout=10,
                )
                end = min(time.time(), item.lease_expires_unix)
            except grpc.RpcError:
                end = item.lease_expires_unix  # not completed: held until the lease ran out
            with lock:
                claims.append(_Claim(item.item_id, name, start, end))

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(clients)]
    threads += [threading.Thread(target=reader, args=(j,)) for j in range(readers)]
    for t in threads:
        t.start()
    time.sleep(kill_at)
    # a reader on the victim replica claims and dies with it: its claims are never completed
    abandoned: list[tuple[str, float]] = []
    victim_stub = worklist_pb2_grpc.WorklistStub(  # type: ignore[no-untyped-call]
        channel(replicas.addresses()[victim])
    )
    for _ in range(abandon):
        try:
            item = victim_stub.Claim(
                worklist_pb2.ClaimRequest(reader=f"doomed-{seed_base}", lease_seconds=lease_s),
                timeout=10,
            )
        except grpc.RpcError:
            break
        abandoned.append((item.item_id, item.lease_expires_unix))
        with lock:
            claims.append(_Claim(item.item_id, f"doomed-{seed_base}", time.time(),
                                 item.lease_expires_unix))  # fmt: skip
    replicas.kill_and_restart(victim)
    time.sleep(max(0.5, duration_s - kill_at))
    stop.set()
    for t in threads:
        t.join(60)
    for ch in channels.values():
        ch.close()
    # the abandoned leases run out on the database clock
    if abandoned:
        time.sleep(max(0.0, max(e for _, e in abandoned) - time.time()) + 0.5)

    result.attempted, result.acknowledged = len(attempted), len(acked)
    result.claims, result.abandoned_leases = len(claims), len(abandoned)
    items = [
        i for i in store.list_items(states=STATES, limit=1_000_000) if i.study_uid in attempted
    ]
    per_study = Counter(item.study_uid for item in items)
    result.lost, result.duplicated = _lost_and_duplicated(per_study, acked)
    for item in items:
        history = store.history(item.item_id)
        # readers claim and complete meanwhile: the state may have moved on, the result not
        result.half_written += not _whole(item, history, with_state=False)
        result.double_claims += _history_double_claims(history)
    result.double_claims += _interval_overlaps(claims)
    for item_id, _ in abandoned:
        item = store.get(item_id)  # expires what ran out
        actions = [e.action for e in store.history(item_id)]
        still_held = item.state == "CLAIMED" and item.claimed_by == f"doomed-{seed_base}"
        result.leases_not_expired += still_held or "lease-expired" not in actions
    # re-sending acknowledged studies to any replica replays them and adds nothing
    for k, uid in enumerate(sorted(acked)[:8]):
        _, data = synthetic_study(acked[uid])
        with grpc.insecure_channel(replicas.addresses()[k % n]) as ch:
            stub = triage_pb2_grpc.TriageStub(ch)  # type: ignore[no-untyped-call]
            reply = stub.Triage(triage_pb2.TriageRequest(instances=[data]), timeout=30)
        result.replay_failures += not reply.replayed
    after = Counter(
        i.study_uid for i in store.list_items(states=STATES, limit=1_000_000)
        if i.study_uid in attempted
    )  # fmt: skip
    result.duplicated = max(result.duplicated, sum(1 for c in after.values() if c > 1))
    return result
