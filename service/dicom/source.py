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

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

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


def read_source(data: BytesLike | InstanceBytes) -> Dataset:
    """The header (no pixel data) of one Part-10 instance (whole, or as its stream chunks)."""
    whole = data if isinstance(data, bytes | bytearray | memoryview) else b"".join(data)
    ds, _ = parse_dataset(whole, stop_before_pixels=True)
    return ds


def chosen_source(instances: Sequence[InstanceBytes], result: StudyResult) -> Dataset:
    """The header of the image the result was read from (found by its SOP Instance UID).

    The instances not ignored by eligibility are tried first (the chosen one is among them).
    """
    ignored = {i.index for i in result.ignored}
    order = [i for i in range(len(instances)) if i not in ignored]
    order += sorted(ignored)
    for index in order:
        ds = read_source(instances[index])
        if str(ds.get("SOPInstanceUID", "")) == result.sop_instance_uid:
            return ds
    raise InvalidStudy("the image the result was read from is not among the study's instances")


def header_bytes(header: Dataset) -> bytes:
    """``header`` (no pixel data) as Part-10 bytes in Explicit VR Little Endian, for a writer that
    runs later in another process (the explainer's Secondary Capture); :func:`header_from_bytes`
    reads it back."""
    ds = copy.deepcopy(header)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def header_from_bytes(data: bytes) -> Dataset:
    """The header :func:`header_bytes` wrote."""
    return dcmread(io.BytesIO(data))
