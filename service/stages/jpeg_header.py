"""Frame size from a JPEG (ISO 10918) or JPEG-LS (ISO 14495) codestream header, without decoding.

The decoders allocate what the codestream's SOF marker declares, which need not match the DICOM
header; the decode stage compares the two before decoding.
"""

from __future__ import annotations

import struct

#: Transfer syntaxes whose frames are JPEG or JPEG-LS codestreams.
JPEG_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
    }
)

#: Start-of-frame markers: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC), plus JPEG-LS SOF55.
_SOF = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(columns, rows) from the first SOF marker; None when the header has none (malformed)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF:
            if pos + 9 > len(data):
                return None
            rows, columns = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return columns, rows
        if marker == 0xDA or length < 2:  # start of scan before any SOF
            return None
        pos += 2 + length
    return None
