"""JPEG 2000 at a reduced resolution level: the wavelet's low-pass band, without a full decode.

A JPEG 2000 codestream with D decomposition levels can be decoded at 1/2, 1/4 ... 1/2^D of its
size by stopping the inverse wavelet transform early; OpenJPEG then skips most of the entropy
decoding too. pylibjpeg-openjpeg (what pydicom uses) has no such option, so this module uses
Pillow's JPEG 2000 plugin, which wraps the same OpenJPEG and passes a ``reduce`` factor.

Pillow (up to at least 11.x) computes the reduced image size as ``(size + 2^(r-1)) // 2^r``
while OpenJPEG produces ``ceil(size / 2^r)``; the two disagree for some sizes (RG1: 1841 px at
r = 2 gives 460 vs 461), and Pillow then rejects the tile as "broken data stream". We set the
size and tile ourselves with OpenJPEG's rounding, and check the decoded shape.

Pillow scales samples of precision p < 16 up to 16 bits (``v << (16 - p)``); we shift back so
the values are the stored values the DICOM header describes (rescale and window apply as is).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile

#: Transfer syntaxes whose pixel data is a JPEG 2000 codestream (Part 1).
J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})

_SOC = b"\xff\x4f"
_SIZ = 0xFF51
_COD = 0xFF52


class CodestreamError(ValueError):
    """The codestream header is malformed or disagrees with the DICOM header."""


@dataclass(frozen=True)
class CodestreamInfo:
    """What the SIZ and COD markers say about a JPEG 2000 codestream."""

    width: int
    height: int
    components: int
    precision: int
    signed: bool
    levels: int


def parse_codestream(data: bytes) -> CodestreamInfo:
    """Read SIZ and the first COD marker of a raw J2K codestream (no pixel decoding)."""
    if not data.startswith(_SOC):
        raise CodestreamError("not a JPEG 2000 codestream (no SOC marker)")
    pos = 2
    siz: tuple[int, int, int, int, bool] | None = None
    levels: int | None = None
    while pos + 4 <= len(data) and (siz is None or levels is None):
        marker, length = struct.unpack(">HH", data[pos : pos + 4])
        if marker == 0xFF93 or length < 2:  # start of data: the main header is over
            break
        body = data[pos + 4 : pos + 2 + length]
        if marker == _SIZ and len(body) >= 36 + 3:
            _rsiz, xsiz, ysiz, x0, y0 = struct.unpack(">HIIII", body[:18])
            ncomp = struct.unpack(">H", body[34:36])[0]
            ssiz = body[36]
            siz = (xsiz - x0, ysiz - y0, ncomp, (ssiz & 0x7F) + 1, bool(ssiz & 0x80))
        elif marker == _COD and len(body) >= 6:
            levels = body[5]
        pos += 2 + length
    if siz is None or levels is None:
        raise CodestreamError("JPEG 2000 main header lacks SIZ or COD")
    width, height, ncomp, precision, signed = siz
    return CodestreamInfo(width, height, ncomp, precision, signed, levels)


def reduced_size(size: int, level: int) -> int:
    """OpenJPEG's size of one dimension at resolution ``level`` (``ceil(size / 2^level)``)."""
    return -(-size // (1 << level))


def choose_level(info: CodestreamInfo, model_size: int, min_scale: float) -> int:
    """The deepest level whose short side stays >= ``min_scale * model_size`` (0: full size)."""
    best = 0
    for level in range(1, info.levels + 1):
        short = min(reduced_size(info.width, level), reduced_size(info.height, level))
        if short >= min_scale * model_size:
            best = level
    return best


def decode_reduced(data: bytes, info: CodestreamInfo, level: int) -> npt.NDArray[np.uint16]:
    """Decode a single-component unsigned codestream at ``level``; stored values, uint16."""
    if info.components != 1 or info.signed or info.precision > 16:
        raise CodestreamError("reduced decoding handles single-component unsigned <= 16 bit data")
    image = Image.open(io.BytesIO(data))
    if image.size != (info.width, info.height):
        raise CodestreamError("Pillow and the SIZ marker disagree on the image size")
    size = (reduced_size(info.width, level), reduced_size(info.height, level))
    tile = image.tile[0]
    args = tile.args
    if not isinstance(args, tuple) or len(args) != 5:
        raise CodestreamError("unexpected Pillow JPEG 2000 tile layout")
    image._size = size  # OpenJPEG's rounding, see the module docstring
    image.tile = [
        ImageFile._Tile(
            tile.codec_name, (0, 0, *size), tile.offset, (args[0], level, 0, args[3], args[4])
        )
    ]
    image.load()
    arr = np.asarray(image)
    if arr.shape != (size[1], size[0]):
        raise CodestreamError(f"reduced decode returned shape {arr.shape}, expected {size[::-1]}")
    container_bits = 8 if image.mode == "L" else 16
    shift = container_bits - info.precision
    out = arr.astype(np.uint16, copy=False)
    if shift > 0:
        out = out >> np.uint16(shift)
    return out
