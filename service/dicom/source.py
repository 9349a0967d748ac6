"""The source image the result objects describe: its header, read once, and what of it is kept.

The writers copy the patient and study modules from the source unchanged (highdicom does the
copying). Two attributes are dropped from the copy they read when their values are invalid,
rather than carried into every object: a ``PixelSpacing`` or ``ImagerPixelSpacing`` with a value
that is not positive (RG1 says ``0.000\\0.000``), which would make the derived objects fail
validation; nothing is invented in their place.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from service.core.errors import InvalidStudy
from service.core.types import BytesLike, StudyResult
from service.stages.decode_pool import InstanceBytes
from service.stages.header import parse_dataset

_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing")


def _valid_spacing(value: object) -> bool:
    try:
        values = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False
    return len(values) == 2 and all(v > 0 for v in values)


def writer_view(header: Dataset) -> Dataset:
    """A copy of ``header`` without invalid pixel spacings (see the module doc); ``header``
    itself is left as it is."""
    view = copy.deepcopy(header)
    for keyword in _SPACINGS:
        if keyword in view and not _valid_spacing(view.get(keyword)):
            delattr(view, keyword)
    return view


@dataclass(frozen=True)
class Source:
    """The header of the image a result was read from, and the same as Part-10 bytes."""

    header: Dataset
    raw: bytes = field(repr=False)  # the file up to its pixel data (see :func:`_raw_header`)


def _read(data: BytesLike | InstanceBytes) -> tuple[Dataset, BytesLike, int]:
    whole = data if isinstance(data, bytes | bytearray | memoryview) else b"".join(data)
    ds, at = parse_dataset(whole, stop_before_pixels=True)
    return ds, whole, at


def _raw_header(ds: Dataset, whole: BytesLike, at: int) -> bytes:
    """The file's own bytes up to its pixel data, a complete Part-10 file without it (a slice,
    no re-encoding); a deflated file's parse position is inside the inflated stream, so that
    one is written again (:func:`header_bytes`)."""
    if str(ds.file_meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian:
        return header_bytes(ds)
    return bytes(memoryview(whole)[:at])


def read_source(data: BytesLike | InstanceBytes) -> Dataset:
    """The header (no pixel data) of one Part-10 instance (whole, or as its stream chunks)."""
    return _read(data)[0]


def chosen_source(instances: Sequence[InstanceBytes], result: StudyResult) -> Source:
    """The image the result was read from (found by its SOP Instance UID).

    The instances not ignored by eligibility are tried first (the chosen one is among them).
    """
    ignored = {i.index for i in result.ignored}
    order = [i for i in range(len(instances)) if i not in ignored]
    order += sorted(ignored)
    for index in order:
        ds, whole, at = _read(instances[index])
        if str(ds.get("SOPInstanceUID", "")) == result.sop_instance_uid:
            return Source(ds, _raw_header(ds, whole, at))
    raise InvalidStudy("the image the result was read from is not among the study's instances")


def header_bytes(header: Dataset) -> bytes:
    """``header`` (no pixel data) written as Part-10 bytes in Explicit VR Little Endian (what
    :func:`_raw_header` falls back to); :func:`header_from_bytes` reads it back."""
    ds = copy.deepcopy(header)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def header_from_bytes(data: bytes) -> Dataset:
    """A header :attr:`Source.raw` holds (Part-10 bytes without pixel data)."""
    return dcmread(io.BytesIO(data))
