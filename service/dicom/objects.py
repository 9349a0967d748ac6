"""The result-writing stage after conclude: a study's result as DICOM objects (bytes).

Kinds: ``SR`` (:mod:`service.dicom.sr`), ``SC`` (:mod:`service.dicom.sc`, one per finding),
``SEG`` (:mod:`service.dicom.seg`) and ``KOS`` (:mod:`service.dicom.kos`, only for deferred or
STAT studies). :meth:`Writer.prepare` builds them all before the result is committed; the SR and
KOS state the reading priority, and :meth:`Prepared.finish` (called inside the commit,
:func:`service.commit.commit_result`) rebuilds those two when the worklist placed the study at
another priority than the routed one (an earlier item of the study had a higher one), so the
objects stored with a result say exactly what the stored result says.

Nothing here imports the gRPC boundary; the objects are Part-10 bytes with their UIDs.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from service.core.types import StudyResult
from service.dicom.destinations import KINDS
from service.dicom.kos import build_key_object, wants_key_object
from service.dicom.sc import build_overlays
from service.dicom.seg import build_segmentation
from service.dicom.source import writer_view
from service.dicom.sr import build_sr

__all__ = ["KINDS", "DicomObject", "Prepared", "Writer", "WriterSettings", "encode"]
#: Held while the image objects are encoded: openjpeg's JPEG 2000 encoder (through pydicom and
#: pylibjpeg-openjpeg) crashed the process with a segmentation fault when two triage threads
#: encoded Segmentations at once (seen in the SIGKILL test under load), so one at a time.
_CODEC_LOCK = threading.Lock()
#: Kinds that need the overlay images of the result (RequestOptions.include_overlay).
NEEDS_OVERLAY = frozenset({"SC"})


@dataclass(frozen=True)
class DicomObject:
    """One result object as Part-10 bytes."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes = field(repr=False)


def encode(kind: str, ds: Dataset) -> DicomObject:
    """``ds`` as a Part-10 file (its own transfer syntax, Explicit VR Little Endian if unset)."""
    buffer = io.BytesIO()
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(buffer, enforce_file_format=True)
    return DicomObject(
        kind=kind,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        data=buffer.getvalue(),
    )


@dataclass(frozen=True)
class WriterSettings:
    """Transfer syntaxes of the image objects."""

    sc_transfer_syntax: str = ExplicitVRLittleEndian
    seg_transfer_syntax: str = ExplicitVRLittleEndian


@dataclass(frozen=True)
class Prepared:
    """A result with its objects built for the priority it was routed at.

    :meth:`finish` returns them for the priority the worklist placed the study at: the same
    objects when that is the routed priority (the usual case), else the SR and KOS rebuilt.
    """

    result: StudyResult
    source: Dataset
    kinds: frozenset[str]
    images: tuple[DicomObject, ...]
    reports: tuple[DicomObject, ...]
    priority: str

    def _reports(self, priority: str) -> list[DicomObject]:
        out: list[DicomObject] = []
        if "SR" in self.kinds:
            out.append(encode("SR", build_sr(self.result, self.source, priority)))
        if "KOS" in self.kinds and wants_key_object(self.result, priority):
            out.append(encode("KOS", build_key_object(self.result, self.source, priority)))
        return out

    def finish(self, priority: str) -> list[DicomObject]:
        """Every object of the result, for the reading priority it was placed at."""
        reports = list(self.reports) if priority == self.priority else self._reports(priority)
        return [*reports[:1], *self.images, *reports[1:]] if reports else list(self.images)


def quiet_highdicom() -> None:
    """highdicom logs at INFO which attributes it copies from which source (by SOP Instance
    UID) and warns quoting header values: its logger is kept at ERROR and its warnings off in
    the service, so neither a UID nor a header value reaches a log line."""
    logging.getLogger("highdicom").setLevel(logging.ERROR)
    # its warnings quote header values (a referring physician's name): never shown
    warnings.filterwarnings("ignore", module=r"highdicom(\.|$)")
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # one INFO line per encoded tile


class Writer:
    """Builds the objects of results (see the module doc)."""

    def __init__(self, settings: WriterSettings) -> None:
        quiet_highdicom()
        self.settings = settings

    def prepare(self, result: StudyResult, source: Dataset, kinds: Iterable[str]) -> Prepared:
        """The image-derived objects of ``result`` for the wanted ``kinds``."""
        wanted = frozenset(kinds)
        unknown = wanted - set(KINDS)
        if unknown:
            raise ValueError(f"unknown DICOM object kind(s) {sorted(unknown)}; use {list(KINDS)}")
        view = writer_view(source)
        images: list[DicomObject] = []
        with _CODEC_LOCK:  # the pixel encoders are not safe to run in two threads at once
            if "SC" in wanted:
                overlays = build_overlays(result, view, self.settings.sc_transfer_syntax)
                images += [encode("SC", ds) for ds in overlays]
            if "SEG" in wanted:
                segmentation = build_segmentation(result, view, self.settings.seg_transfer_syntax)
                images.append(encode("SEG", segmentation))
        priority = result.priority.name
        prepared = Prepared(result, view, wanted, tuple(images), (), priority)
        return dataclasses.replace(prepared, reports=tuple(prepared._reports(priority)))
