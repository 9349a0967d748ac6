"""Deflated Explicit VR Little Endian: the data set inflated with a bounded output size.

In a deflated file (transfer syntax 1.2.840.10008.1.2.1.99) everything after the file meta
information is one raw deflate stream. pydicom inflates it whole while reading the header, so a
1.5 MB file can demand gigabytes before any limit is checked. :func:`inflate_file` reads the
file meta group itself, inflates the rest with zlib in steps that never produce more than
``max_bytes`` in all, and returns an equivalent Explicit VR Little Endian Part-10 file (the
same meta group with its transfer syntax rewritten), which the decode stage reads as any other.
"""

from __future__ import annotations

import io
import zlib

from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from service.core.errors import InvalidStudy, TooLarge

DEFLATED = str(DeflatedExplicitVRLittleEndian)
#: Inflated bytes produced per zlib call (the bound is checked after each step).
_STEP = 1 << 20


def transfer_syntax_of(data: bytes | memoryview) -> str:
    """The TransferSyntaxUID of a Part-10 file's meta group ('' when it cannot be read)."""
    fp = io.BytesIO(bytes(data[: _meta_end(data)]))
    try:
        read_preamble(fp, False)
        return str(_read_file_meta_info(fp).get("TransferSyntaxUID", ""))
    except Exception:  # malformed meta: the header reader reports it properly
        return ""


def _meta_end(data: bytes | memoryview) -> int:
    """Offset of the first byte after the file meta group (from its group length element)."""
    # 128-byte preamble, "DICM", then (0002,0000) UL group length: tag 4 + VR 2 + len 2 + value 4
    if (
        len(data) < 144
        or bytes(data[128:132]) != b"DICM"
        or bytes(data[132:136]) != b"\x02\x00\x00\x00"
    ):
        return min(len(data), 1 << 16)
    length = int.from_bytes(bytes(data[140:144]), "little")
    return min(len(data), 144 + length)


def inflate_file(data: bytes | memoryview, index: int, max_bytes: int) -> bytes:
    """The file as Explicit VR Little Endian, its data set inflated to at most ``max_bytes``.

    Raises :class:`TooLarge` naming the limit when the stream inflates beyond it, and
    :class:`InvalidStudy` when the stream is not valid deflate data.
    """
    end = _meta_end(data)
    fp = io.BytesIO(bytes(data[:end]))
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:
        raise InvalidStudy(f"instance {index}: the file meta information is malformed") from None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = memoryview(data)[end:]
    parts: list[bytes] = []
    total = 0
    try:
        while pending:
            out = inflater.decompress(pending, min(_STEP, max_bytes + 1 - total))
            total += len(out)
            parts.append(out)
            if total > max_bytes:
                raise TooLarge(
                    f"instance {index}: the deflated data set inflates to more than {max_bytes} "
                    "bytes (decode.max_inflated_bytes); nothing was decoded"
                )
            pending = memoryview(inflater.unconsumed_tail)
            if not out and not pending:
                break
            if inflater.eof:
                break
    except zlib.error:
        raise InvalidStudy(
            f"instance {index}: the deflated data set is not valid deflate data"
        ) from None
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = io.BytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=False)  # type: ignore[arg-type]
    return header.getvalue() + b"".join(parts)
