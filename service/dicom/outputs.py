"""Which DICOM objects a result gets, for whom: the link between a front door and the writers.

For each front door (``grpc``, ``dicom``) the configured destinations that take its results
(``sources``) say which kinds to build and where each kind goes; a gRPC client may also ask for
the SR, SC and SEG in its reply (``include_dicom_objects``). :meth:`DicomOutputs.pending` builds
the objects before the commit; :meth:`Pending.for_store` hands the routed ones to the store
inside the commit (their outbox rows are written in the result's transaction), and
:meth:`Pending.reply_objects` gives the ones a gRPC reply carries: those stored with the result
(a replay returns those of the stored result, when they are still kept), else the ones built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from service.core.types import StudyResult
from service.dicom.destinations import Destination
from service.dicom.objects import DicomObject, Prepared, Writer
from service.dicom.source import chosen_source
from service.stages.decode_pool import InstanceBytes
from service.worklist.store import NewObject, Placement, WorklistStore

GRPC, DICOM = "grpc", "dicom"
#: What a gRPC client that sets ``include_dicom_objects`` gets.
ASKED_KINDS = frozenset({"SR", "SC", "SEG"})


@dataclass
class Pending:
    """A result's objects between building and the commit."""

    prepared: Prepared
    routes: dict[str, tuple[str, ...]]  # kind -> destination names
    source_raw: bytes = field(default=b"", repr=False)  # the source's own header bytes
    built: list[DicomObject] | None = field(default=None)

    @property
    def routed(self) -> bool:
        """True when some destination takes some of the objects."""
        return any(self.routes.values())

    def for_store(self, placement: Placement) -> list[NewObject]:
        """The objects to store and send, for the placed priority (inside the commit)."""
        self.built = self.prepared.finish(placement.priority.name)
        return [
            NewObject(
                kind=o.kind,
                sop_class_uid=o.sop_class_uid,
                sop_instance_uid=o.sop_instance_uid,
                transfer_syntax_uid=o.transfer_syntax_uid,
                data=o.data,
                destinations=self.routes[o.kind],
            )
            for o in self.built
            if self.routes.get(o.kind)
        ]

    def explanation_route(self) -> tuple[bytes, tuple[str, ...]]:
        """The source header (the file's own bytes before its pixel data: no re-encoding on the
        request path) and the destinations that take Secondary Captures (where the explainer
        sends its strips); empty when none does."""
        destinations = self.routes.get("SC", ())
        return (self.source_raw, destinations) if destinations else (b"", ())

    def reply_objects(
        self, store: WorklistStore | None, replayed: bool, result_id: int, priority: str
    ) -> list[DicomObject]:
        """The SR, SC and SEG a gRPC reply carries (see the module doc)."""
        if replayed and store is not None and result_id:
            stored = [o for o in store.result_objects(result_id) if o.kind in ASKED_KINDS]
            if stored and all(o.data for o in stored):
                return [
                    DicomObject(
                        o.kind, o.sop_class_uid, o.sop_instance_uid, o.transfer_syntax_uid, o.data
                    )
                    for o in stored
                ]
        objects = self.built if self.built is not None and not replayed else None
        if objects is None:
            objects = self.prepared.finish(priority)
        return [o for o in objects if o.kind in ASKED_KINDS]


class DicomOutputs:
    """The destinations by front door, and the writer that builds their objects."""

    def __init__(self, writer: Writer, destinations: Sequence[Destination]) -> None:
        self.writer = writer
        self.destinations = tuple(destinations)

    def routes(self, source: str) -> dict[str, tuple[str, ...]]:
        """Kind -> names of the destinations that take it, for results from ``source``."""
        out: dict[str, tuple[str, ...]] = {}
        for d in self.destinations:
            if source in d.sources:
                for kind in d.kinds:
                    out[kind] = (*out.get(kind, ()), d.name)
        return out

    def kinds(self, source: str, asked: bool) -> frozenset[str]:
        """The kinds to build for a result from ``source`` (``asked``: a gRPC client wants them)."""
        return frozenset(self.routes(source)) | (ASKED_KINDS if asked else frozenset())

    def needs_overlay(self, source: str, asked: bool) -> bool:
        """True when the result's overlays are needed (the Secondary Capture images)."""
        return "SC" in self.kinds(source, asked)

    def pending(
        self, result: StudyResult, instances: Sequence[InstanceBytes], source: str, asked: bool
    ) -> Pending | None:
        """The objects of ``result`` built (None when no kind is wanted)."""
        kinds = self.kinds(source, asked)
        if not kinds:
            return None
        chosen = chosen_source(instances, result)
        return Pending(
            self.writer.prepare(result, chosen.header, kinds), self.routes(source), chosen.raw
        )
