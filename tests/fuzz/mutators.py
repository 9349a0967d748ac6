"""Structure-aware mutations of DICOM Part-10 files, as a broken modality or an attacker makes them.

:func:`elements` walks the top level of a data set (explicit or implicit VR little endian) and
returns where each element's tag, length and value lie; the mutators then change lengths,
duplicate or drop elements, swap the transfer syntax, rewrite declared image sizes, break the
fragments and offset table of encapsulated pixel data, splice files together, flip bytes, or
truncate. Each mutator takes the bytes and a ``random.Random`` and returns new bytes (or the
same bytes when it does not apply).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

#: VRs whose explicit-VR length field is 4 bytes (after 2 reserved bytes).
LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"SV",
    b"UV",
}
PIXEL_DATA = 0x7FE00010
#: Transfer syntaxes a file can be made to claim.
SYNTAXES = (
    b"1.2.840.10008.1.2",
    b"1.2.840.10008.1.2.1",
    b"1.2.840.10008.1.2.1.99",
    b"1.2.840.10008.1.2.2",
    b"1.2.840.10008.1.2.4.50",
    b"1.2.840.10008.1.2.4.57",
    b"1.2.840.10008.1.2.4.70",
    b"1.2.840.10008.1.2.4.80",
    b"1.2.840.10008.1.2.4.81",
    b"1.2.840.10008.1.2.4.90",
    b"1.2.840.10008.1.2.4.91",
    b"1.2.840.10008.1.2.5",
)
#: Image-size attributes (US) and the values a lying header may declare.
SIZE_TAGS = {
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280002: "SamplesPerPixel",
    0x00280100: "BitsAllocated",
    0x00280101: "BitsStored",
    0x00280102: "HighBit",
    0x00280103: "PixelRepresentation",
}
EXTREMES = (0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 31, 32, 33, 64, 255, 256, 4096, 32767, 65535)


@dataclass(frozen=True)
class Element:
    """Where one top-level element lies in the file."""

    start: int  # the tag's first byte
    tag: int
    length_at: int
    length_size: int  # 2 or 4
    value_at: int
    length: int  # 0xFFFFFFFF: undefined


def _meta_end(data: bytes) -> int:
    if len(data) < 144 or data[128:132] != b"DICM":
        return 0
    return 144 + int.from_bytes(data[140:144], "little")


def elements(data: bytes, *, limit: int = 4000) -> list[Element]:
    """The top-level elements after the file meta group (and the meta group's own)."""
    out: list[Element] = []
    pos = 132 if data[128:132] == b"DICM" else 0
    meta_end = _meta_end(data)
    # the TransferSyntaxUID (0002,0010) UI value, to know whether the data set is implicit VR
    syntax = data[:meta_end].split(b"\x02\x00\x10\x00UI", 1)[-1][2:24] if meta_end else b""
    implicit = syntax.split(b"\x00")[0] == b"1.2.840.10008.1.2"
    while pos + 8 <= len(data) and len(out) < limit:
        group, number = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | number
        explicit = group == 0x0002 or not implicit
        vr = data[pos + 4 : pos + 6]
        if explicit and vr.isalpha() and vr.isupper():
            if vr in LONG_VRS:
                if pos + 12 > len(data):
                    break
                length_at, size = pos + 8, 4
                length = struct.unpack_from("<I", data, length_at)[0]
                value_at = pos + 12
            else:
                length_at, size = pos + 6, 2
                length = struct.unpack_from("<H", data, length_at)[0]
                value_at = pos + 8
        else:
            length_at, size = pos + 4, 4
            length = struct.unpack_from("<I", data, length_at)[0]
            value_at = pos + 8
        out.append(Element(pos, tag, length_at, size, value_at, length))
        if length == 0xFFFFFFFF:
            if tag == PIXEL_DATA:
                break
            end = data.find(b"\xfe\xff\xdd\xe0", value_at)  # sequence delimiter
            if end < 0:
                break
            pos = end + 8
        else:
            pos = value_at + length
    return out


def _pick(rng: random.Random, data: bytes) -> Element | None:
    found = elements(data)
    return rng.choice(found) if found else None


def mutate_length(data: bytes, rng: random.Random) -> bytes:
    """Rewrite one element's length: 0, undefined, off by a little, or huge."""
    element = _pick(rng, data)
    if element is None:
        return data
    top = (1 << (8 * element.length_size)) - 1
    choice = rng.choice(
        [0, top, element.length + 1, max(0, element.length - 1), rng.randrange(top + 1), top // 2]
    )
    fmt = "<H" if element.length_size == 2 else "<I"
    patched = bytearray(data)
    struct.pack_into(fmt, patched, element.length_at, min(choice, top))
    return bytes(patched)


def duplicate_element(data: bytes, rng: random.Random) -> bytes:
    """Insert a copy of one element right after it (a duplicated tag)."""
    element = _pick(rng, data)
    if element is None or element.length == 0xFFFFFFFF:
        return data
    end = element.value_at + element.length
    return data[:end] + data[element.start : end] + data[end:]


def drop_element(data: bytes, rng: random.Random) -> bytes:
    """Remove one element."""
    element = _pick(rng, data)
    if element is None or element.length == 0xFFFFFFFF:
        return data
    return data[: element.start] + data[element.value_at + element.length :]


def swap_syntax(data: bytes, rng: random.Random) -> bytes:
    """Make the file meta claim another transfer syntax (lengths fixed up)."""
    for element in elements(data, limit=20):
        if element.tag == 0x00020010:
            uid = rng.choice(SYNTAXES)
            value = uid + (b"\x00" if len(uid) % 2 else b"")
            head = data[: element.length_at] + struct.pack("<H", len(value))
            body = head + value + data[element.value_at + element.length :]
            delta = len(value) - element.length
            group = int.from_bytes(body[140:144], "little") + delta
            return body[:140] + struct.pack("<I", max(0, group)) + body[144:]
    return data


def declare_size(data: bytes, rng: random.Random) -> bytes:
    """Rewrite one declared image attribute (Rows, Columns, BitsAllocated...) to an extreme."""
    sizes = [e for e in elements(data) if e.tag in SIZE_TAGS and e.length == 2]
    if not sizes:
        return data
    element = rng.choice(sizes)
    patched = bytearray(data)
    struct.pack_into("<H", patched, element.value_at, rng.choice(EXTREMES))
    return bytes(patched)


def break_fragments(data: bytes, rng: random.Random) -> bytes:
    """Corrupt encapsulated pixel data: item lengths, the basic offset table, item tags,
    extra empty fragments, a missing sequence delimiter."""
    pixel = next((e for e in elements(data) if e.tag == PIXEL_DATA), None)
    if pixel is None or pixel.length != 0xFFFFFFFF:
        return data
    items = []
    pos = pixel.value_at
    while pos + 8 <= len(data) and data[pos : pos + 4] == b"\xfe\xff\x00\xe0" and len(items) < 64:
        length = struct.unpack_from("<I", data, pos + 4)[0]
        items.append((pos, length))
        pos += 8 + length
    if not items:
        return data
    patched = bytearray(data)
    kind = rng.randrange(5)
    at, length = rng.choice(items)
    if kind == 0:  # an item length that lies
        struct.pack_into("<I", patched, at + 4, rng.choice([0, 1, length * 2 + 1, 0xFFFFFFF0]))
    elif kind == 1:  # an offset table pointing anywhere
        first, table_length = items[0]
        for i in range(0, table_length - 3, 4):
            struct.pack_into("<I", patched, first + 8 + i, rng.randrange(1 << 32))
        if table_length == 0:
            return (
                bytes(patched[: first + 4])
                + struct.pack("<II", 4, rng.randrange(1 << 32))
                + bytes(patched[first + 8 :])
            )
    elif kind == 2:  # a broken item tag
        patched[at : at + 4] = bytes(rng.randrange(256) for _ in range(4))
    elif kind == 3:  # empty fragments inserted
        return (
            bytes(patched[:at])
            + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" * rng.randint(1, 8)
            + bytes(patched[at:])
        )
    else:  # the sequence delimiter removed
        end = data.rfind(b"\xfe\xff\xdd\xe0")
        if end > 0:
            return data[:end]
    return bytes(patched)


def splice(data: bytes, rng: random.Random, other: bytes) -> bytes:
    """The header of one file with the pixel data (or tail) of another."""
    mine = next((e for e in elements(data) if e.tag == PIXEL_DATA), None)
    theirs = next((e for e in elements(other) if e.tag == PIXEL_DATA), None)
    if mine is None or theirs is None:
        cut = rng.randrange(len(data) + 1)
        return data[:cut] + other[rng.randrange(len(other) + 1) :]
    return data[: mine.start] + other[theirs.start :]


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    """Overwrite a few bytes, most often in the header or the first bytes of the pixel data."""
    if not data:
        return data
    patched = bytearray(data)
    pixel = next((e for e in elements(data) if e.tag == PIXEL_DATA), None)
    hot = pixel.value_at if pixel is not None else len(data) // 2
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.5:
            at = rng.randrange(len(data))
        else:
            at = min(len(data) - 1, max(0, hot + rng.randrange(-256, 512)))
        patched[at] = rng.randrange(256)
    return bytes(patched)


def truncate(data: bytes, rng: random.Random) -> bytes:
    """Cut the file: anywhere, or just inside an element."""
    found = elements(data)
    if found and rng.random() < 0.5:
        element = rng.choice(found)
        return data[: element.value_at + rng.randrange(max(1, min(element.length, 64)))]
    return data[: rng.randrange(len(data) + 1)]


def change_vr(data: bytes, rng: random.Random) -> bytes:
    """Give one explicit-VR element another VR."""
    element = _pick(rng, data)
    if element is None or element.length_at != element.start + 6:
        return data
    patched = bytearray(data)
    patched[element.start + 4 : element.start + 6] = rng.choice(
        [b"OB", b"UN", b"SQ", b"US", b"UL", b"XX"]
    )
    return bytes(patched)


#: The mutators drawn from (with their weights); splice is drawn separately (needs two files).
MUTATORS: tuple[tuple[Callable[[bytes, random.Random], bytes], int], ...] = (
    (mutate_length, 3),
    (duplicate_element, 1),
    (drop_element, 1),
    (swap_syntax, 2),
    (declare_size, 3),
    (break_fragments, 3),
    (flip_bytes, 3),
    (truncate, 1),
    (change_vr, 1),
)


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to four structure-aware mutations of ``data``."""
    functions = [m for m, _ in MUTATORS]
    weights = [w for _, w in MUTATORS]
    for _ in range(rng.randint(1, 4)):
        if others and rng.random() < 0.05:
            data = splice(data, rng, rng.choice(others))
        else:
            data = rng.choices(functions, weights)[0](data, rng)
        if len(data) < 8:
            break
    return data


def safe_mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """:func:`mutate`, or ``data`` unchanged should a mutator trip over what it made."""
    try:
        return mutate(data, rng, others)
    except (IndexError, ValueError, struct.error):
        return data
    return data
