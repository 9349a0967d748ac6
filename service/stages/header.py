"""Header stage: one instance's header facts, parsed without its pixel data, budgets checked.

:func:`read_header` parses an instance with ``stop_before_pixels`` and records what eligibility
and the limits need (modality, body part, view, sizes, UIDs). Budgets are checked from the
header alone, before any pixel buffer exists, and every refusal names the attribute and the
limit:

- ``Rows x Columns x SamplesPerPixel x NumberOfFrames`` against ``decode.max_pixels``;
- the longer side over the shorter against ``decode.max_aspect_ratio`` for images of more than
  :data:`ASPECT_MIN_PIXELS` (a radiograph is never 255 x 65535; such headers are decompression
  bombs, while a small image of any shape is cheap);
- compressed pixel data against ``decode.max_compression_ratio`` (declared decoded bytes over
  the bytes that follow the header), for images of more than :data:`ASPECT_MIN_PIXELS`;
- a Deflated Explicit VR file is inflated with its output bounded by
  ``decode.max_inflated_bytes`` (:mod:`service.stages.deflate`) before it is parsed.

The bytes may be a ``memoryview`` (a decode worker's shared-memory arena): they are read through
a file object over the view, so the header parse copies only the elements it reads.
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from service.core.errors import InvalidStudy, TooLarge, TriageError
from service.core.types import BytesLike, InstanceHeader
from service.stages.deflate import DEFLATED, inflate_file, transfer_syntax_of

if TYPE_CHECKING:
    from typing_extensions import Buffer

#: Tags at which ``stop_before_pixels`` stops: (7FE0,0008/0009/0010), little and big endian.
PIXEL_TAGS = frozenset(
    {
        b"\xe0\x7f\x10\x00",
        b"\xe0\x7f\x08\x00",
        b"\xe0\x7f\x09\x00",
        b"\x7f\xe0\x00\x10",
        b"\x7f\xe0\x00\x08",
        b"\x7f\xe0\x00\x09",
    }
)


#: Images up to this many pixels are not held to ``decode.max_aspect_ratio``.
ASPECT_MIN_PIXELS = 1 << 20


class ViewReader(io.RawIOBase):
    """A read-only, seekable file object over a buffer, without copying it."""

    def __init__(self, data: BytesLike) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        """True."""
        return True

    def seekable(self) -> bool:
        """True."""
        return True

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` (from the start, the current position or the end)."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Buffer) -> int:
        """Copy the next bytes into ``buffer``; 0 at the end."""
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), len(self._view) - self._pos))
        out[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        """The next ``size`` bytes (all that remain when ``size`` is negative)."""
        end = (
            len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        )
        start, self._pos = self._pos, max(self._pos, end)
        return bytes(self._view[start:end])


def describe_parse_error(exc: BaseException) -> str:
    """What is wrong with bytes pydicom could not parse (its own text is never quoted)."""
    if isinstance(exc, InvalidDicomError):
        return "not a DICOM Part-10 file (no 'DICM' prefix after the 128-byte preamble)"
    if isinstance(exc, EOFError):
        return "truncated DICOM file: the data ends inside an element"
    return f"malformed DICOM ({type(exc).__name__} while parsing the data set)"


#: Bytes in which a deflated file's meta group names its transfer syntax (checked first).
META_PEEK = 1 << 12
#: How much of the file the fast header path copies to look for the pixel data element.
HEAD_BYTES = 1 << 16
_PIXEL_TAG = re.compile(b"|".join(re.escape(t) for t in sorted(PIXEL_TAGS)))


def _head(view: memoryview) -> tuple[io.BytesIO, int] | None:
    """The bytes up to the first PixelData tag, as a C-speed file object (the header parse
    makes hundreds of small reads), or None when no tag shows in the first bytes."""
    head = bytes(view[:HEAD_BYTES])
    found = _PIXEL_TAG.search(head)
    if found is None:
        return None
    at = found.start()
    return io.BytesIO(head[: at + 16]), at  # the element header pydicom reads to stop


def parse_dataset(data: BytesLike, *, stop_before_pixels: bool) -> tuple[Dataset, int]:
    """The data set and the position where parsing stopped; InvalidStudy when malformed.

    Before pixels, the fast path parses a copy of the bytes up to the first PixelData tag and
    keeps the result only when the parse stopped exactly there (the tag bytes could also occur
    inside an earlier value); otherwise the whole view is parsed in place.
    """
    view = memoryview(data).cast("B")
    if stop_before_pixels:
        fast = _head(view)
        if fast is not None:
            head, at = fast
            try:
                ds = pydicom.dcmread(head, stop_before_pixels=True)
                if head.tell() == at:
                    return ds, at
            except Exception:  # the slow path below reports a real problem
                pass
    fp = ViewReader(view)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types on bad input; all mean "not decodable"
        raise InvalidStudy(describe_parse_error(exc)) from None
    return ds, fp.tell()


def _int(ds: Dataset, keyword: str, default: int | None, index: int) -> int | None:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        return int(value)
    except Exception:
        raise InvalidStudy(f"instance {index}: {keyword} is not an integer") from None


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    text = str(value).strip()
    return text if "UID" in keyword else text.upper()


def read_header(
    data: BytesLike,
    index: int,
    max_pixels: int,
    *,
    max_aspect_ratio: float = float("inf"),
    max_inflated_bytes: int = 1 << 62,
    max_compression_ratio: float = float("inf"),
) -> InstanceHeader:
    """Parse one instance without its pixel data and check its declared size against budgets."""
    view = memoryview(data).cast("B")
    if len(view) < 132:
        raise InvalidStudy(
            f"instance {index}: {len(view)} bytes is too short to be a DICOM Part-10 file"
        )
    inflated: bytes | None = None
    if DEFLATED.encode() in bytes(view[:META_PEEK]) and transfer_syntax_of(view) == DEFLATED:
        inflated = inflate_file(view, index, max_inflated_bytes)
        view = memoryview(inflated)
    ds, position = parse_dataset(view, stop_before_pixels=True)
    try:
        header = _facts(ds, view, index, position, inflated)
    except TriageError:
        raise
    except Exception as exc:  # pydicom converts values lazily: a bad one surfaces here
        raise InvalidStudy(
            f"instance {index}: malformed DICOM ({type(exc).__name__} while reading the header)"
        ) from None
    check_budgets(header, max_pixels, max_aspect_ratio)
    if header.transfer_syntax not in NATIVE_SYNTAXES:
        check_ratio(header, _bits(ds), len(view) - position, max_compression_ratio)
    return header


def _facts(
    ds: Dataset, view: memoryview, index: int, position: int, inflated: bytes | None
) -> InstanceHeader:
    """The header facts of a parsed data set (no budget checked yet)."""
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        raise InvalidStudy(
            f"instance {index}: DICOM file meta information lacks the TransferSyntaxUID"
        )
    has_pixels = bytes(view[position : position + 4]) in PIXEL_TAGS
    rows = _int(ds, "Rows", 0, index) or 0
    columns = _int(ds, "Columns", 0, index) or 0
    spp = _int(ds, "SamplesPerPixel", 1, index) or 1
    frames = _int(ds, "NumberOfFrames", 1, index) or 1
    return InstanceHeader(
        index=index,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        photometric=_text(ds, "PhotometricInterpretation"),
        rows=rows,
        columns=columns,
        samples_per_pixel=spp,
        frames=frames,
        instance_number=_int(ds, "InstanceNumber", None, index),
        has_pixel_data=has_pixels,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        institution=_text(ds, "InstitutionName"),
        pixel_offset=position,
        dataset=ds,
        inflated=inflated,
    )


#: Uncompressed transfer syntaxes (implicit, explicit little and big endian, deflated inflated).
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


def _bits(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("BitsAllocated", 16) or 16))
    except (TypeError, ValueError):
        return 16


def check_ratio(header: InstanceHeader, bits: int, compressed: int, max_ratio: float) -> None:
    """Refuse compressed pixel data that declares far more decoded bytes than a radiograph's
    encoding ever gives (a 32 KB JPEG declaring 6000 x 6000 pixels is a decompression bomb)."""
    declared = header.pixels * ((bits + 7) // 8)
    if header.pixels <= ASPECT_MIN_PIXELS or compressed <= 0:
        return
    if declared > max_ratio * compressed:
        raise TooLarge(
            f"instance {header.index}: {compressed} bytes of compressed pixel data declare "
            f"{declared} bytes decoded, a ratio above {max_ratio:g} "
            "(decode.max_compression_ratio): a decompression bomb; nothing was decoded"
        )


def check_budgets(header: InstanceHeader, max_pixels: int, max_aspect_ratio: float) -> None:
    """Refuse a header whose declared image exceeds a budget (nothing has been decoded)."""
    index, rows, columns = header.index, header.rows, header.columns
    spp, frames = header.samples_per_pixel, header.frames
    if min(rows, columns, spp, frames) < 0:
        raise InvalidStudy(f"instance {index}: negative image dimensions in the header")
    if header.has_pixel_data and (rows == 0 or columns == 0):
        raise InvalidStudy(f"instance {index}: pixel data without Rows and Columns")
    if header.pixels > max_pixels:
        raise TooLarge(
            f"instance {index}: the header declares {rows} x {columns} x {spp} x {frames} = "
            f"{header.pixels} samples, above the server's limit of {max_pixels} "
            "(decode.max_pixels); nothing was decoded"
        )
    elongated = max(rows, columns) > max_aspect_ratio * min(rows, columns)
    if header.has_pixel_data and header.pixels > ASPECT_MIN_PIXELS and elongated:
        raise TooLarge(
            f"instance {index}: Rows x Columns = {rows} x {columns} has an aspect ratio above "
            f"{max_aspect_ratio:g} (decode.max_aspect_ratio): not a radiograph; nothing was "
            "decoded"
        )
