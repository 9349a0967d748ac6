"""Decode stage: the chosen instance's pixel data -> display image in [0, 1].

The header was read and its budgets checked by :mod:`service.stages.header` (no pixel buffer
exists before that). :func:`decode_instance` decodes the pixel data through
``triage_common.dicom_image`` (pydicom + the pylibjpeg plugins: JPEG 2000, JPEG baseline and
lossless, JPEG-LS, RLE; rescale, VOI window or LUT, MONOCHROME1 inversion, BitsStored).
Compressed codestreams are checked against the header before any decoder runs. In the server
this runs inside a decode worker process (:mod:`service.stages.decode_pool`), whose memory and
time limits contain a decoder that misbehaves on hostile data.

Reduced-resolution reading (``decode.reduce``, on by default): the model sees S x S pixels, so
a 2000 px radiograph need not be windowed and resized at full size. Where the short side allows
``k = floor(min(Rows, Columns) / (decode.reduce_min_scale * S)) >= 2``:

- JPEG 2000 is decoded at wavelet resolution level ``r`` (the deepest keeping the short side at
  least ``reduce_min_scale * S``; :mod:`service.stages.j2k`): most of the codestream is never
  decoded (RG1 lossless: about 10x faster);
- other encodings are decoded in full and their stored values averaged over k x k blocks.

The display mapping (rescale, window, inversion) and the canonical ``preprocess`` then run on
the smaller image. Both approximate the full-resolution path closely (RG1: probabilities within
about 1e-3); with ``decode.reduce = false`` everything runs at full resolution and lossless
encodings give bit-identical inputs.

Error messages are composed here, from attribute names, tags and sizes; library exception text
(which can quote element values) is never passed on, only its type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from service.config import DecodeConfig
from service.core.errors import DecoderFailed, InvalidStudy, TriageError
from service.core.types import BytesLike, DecodedImage, InstanceHeader
from service.stages.header import parse_dataset
from service.stages.j2k import (
    J2K_SYNTAXES,
    CodestreamError,
    choose_level,
    decode_reduced,
    parse_codestream,
)
from service.stages.jpeg_header import JPEG_SYNTAXES, jpeg_frame_size
from triage_common.dicom_image import (
    DicomDecodeError,
    decode_display,
    decode_stored,
    stored_to_display,
)


@dataclass(frozen=True)
class DecodeOptions:
    """What the decode stage needs from the configuration and the bundle."""

    max_pixels: int
    model_size: int
    reduce: bool = True
    reduce_min_scale: float = 2.0
    max_aspect_ratio: float = float("inf")
    max_inflated_bytes: int = 1 << 62
    max_compression_ratio: float = float("inf")

    @classmethod
    def from_config(cls, decode: DecodeConfig, model_size: int) -> DecodeOptions:
        """The options ``decode.*`` gives for a model of input ``model_size``."""
        return cls(
            max_pixels=decode.max_pixels,
            model_size=model_size,
            reduce=decode.reduce,
            reduce_min_scale=decode.reduce_min_scale,
            max_aspect_ratio=decode.max_aspect_ratio,
            max_inflated_bytes=decode.max_inflated_bytes,
            max_compression_ratio=decode.max_compression_ratio,
        )


def _first_frame(ds: Dataset, header: InstanceHeader) -> bytes:
    from pydicom.encaps import get_frame

    try:
        return bytes(get_frame(ds.PixelData, 0, number_of_frames=header.frames))
    except Exception as exc:
        raise InvalidStudy(
            f"instance {header.index}: encapsulated pixel data is malformed ({type(exc).__name__})"
        ) from None


def _check_codestream(ds: Dataset, header: InstanceHeader) -> bytes | None:
    """Compare a compressed frame's own size with the header before any decoder allocates.

    Returns the first JPEG 2000 frame (for the reduced-resolution path), else None.
    """
    syntax = header.transfer_syntax
    if syntax not in J2K_SYNTAXES and syntax not in JPEG_SYNTAXES:
        return None
    frame = _first_frame(ds, header)
    if syntax in JPEG_SYNTAXES:
        size = jpeg_frame_size(frame)
        if size is None:
            raise InvalidStudy(f"instance {header.index}: JPEG codestream has no frame header")
        kind = "JPEG"
    else:
        try:
            info = parse_codestream(frame)
        except CodestreamError as exc:
            raise InvalidStudy(f"instance {header.index}: {exc}") from None
        size = (info.width, info.height)
        kind = "JPEG 2000"
    if size != (header.columns, header.rows):
        raise InvalidStudy(
            f"instance {header.index}: {kind} codestream is {size[0]} x {size[1]} "
            f"but the header says {header.columns} x {header.rows}"
        )
    return frame if syntax in J2K_SYNTAXES else None


def _reduced_display(
    ds: Dataset, header: InstanceHeader, frame: bytes, options: DecodeOptions
) -> DecodedImage | None:
    """Display image from a reduced-resolution J2K decode, or None when it does not apply."""
    info = parse_codestream(frame)
    if info.components != 1 or info.signed or info.precision > 16 or header.frames != 1:
        return None
    level = choose_level(info, options.model_size, options.reduce_min_scale)
    if level == 0:
        return None
    try:
        stored = decode_reduced(frame, info, level)
    except (CodestreamError, OSError, ValueError):
        return None  # fall back to the full decode, which reports real errors
    return DecodedImage(stored_to_display(ds, stored), level)


def box_factor(rows: int, columns: int, model_size: int, min_scale: float) -> int:
    """The largest k keeping ``min(rows, columns) / k >= min_scale * model_size`` (1 to 64)."""
    return max(1, min(64, int(min(rows, columns) // (min_scale * model_size))))


def box_average(stored: npt.NDArray[Any], k: int) -> npt.NDArray[Any]:
    """Means of k x k blocks, rounded back to the stored dtype (so VOI LUTs still index them).

    Trailing rows and columns that do not fill a block are dropped (fewer than k of each).
    """
    h, w = (stored.shape[0] // k) * k, (stored.shape[1] // k) * k
    integer = stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2
    wide = (np.int32 if stored.dtype.kind == "i" else np.uint32) if integer else np.float64
    # rows first (contiguous runs), then columns of the k-times smaller array
    rows: npt.NDArray[Any] = stored[0:h:k, :w].astype(wide)
    for i in range(1, k):
        rows += stored[i:h:k, :w]
    total = rows[:, 0::k].copy()
    for j in range(1, k):
        total += rows[:, j::k]
    mean = total / float(k * k)
    return np.rint(mean).astype(stored.dtype) if integer else mean.astype(stored.dtype)


#: Native (uncompressed) little-endian transfer syntaxes: implicit and explicit VR.
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def native_pixels(
    data: BytesLike, header: InstanceHeader
) -> tuple[Dataset, npt.NDArray[Any]] | None:
    """Stored pixels of a plain uncompressed image as a view on ``data`` (no copy), or None.

    Covers the common case only: little-endian native syntax, one frame, one sample, unsigned
    8- or 16-bit, a defined-length PixelData element with at least Rows x Columns samples.
    Unused high bits are cleared as pydicom does. Anything else returns None and goes through
    pydicom's decoders. Returns the header data set (all attributes but PixelData) with it.
    """
    syntax = header.transfer_syntax
    if syntax not in (IMPLICIT_LE, EXPLICIT_LE):
        return None
    if header.frames != 1 or header.samples_per_pixel != 1:
        return None
    if header.dataset is not None:
        ds, pos = header.dataset, header.pixel_offset
    else:
        ds, pos = parse_dataset(data, stop_before_pixels=True)
    try:
        allocated = int(ds.BitsAllocated)
        stored_bits = int(ds.get("BitsStored", allocated))
        signed = int(ds.get("PixelRepresentation", 0))
    except Exception:
        return None
    if allocated not in (8, 16) or signed or not 1 <= stored_bits <= allocated:
        return None
    data = memoryview(data).cast("B")
    if bytes(data[pos : pos + 4]) != b"\xe0\x7f\x10\x00":
        return None
    if syntax == EXPLICIT_LE:
        if bytes(data[pos + 4 : pos + 6]) not in (b"OW", b"OB"):
            return None
        length, start = int.from_bytes(bytes(data[pos + 8 : pos + 12]), "little"), pos + 12
    else:
        length, start = int.from_bytes(bytes(data[pos + 4 : pos + 8]), "little"), pos + 8
    count = header.rows * header.columns
    nbytes = count * allocated // 8
    if length == 0xFFFFFFFF or length < nbytes or start + nbytes > len(data):
        return None  # pydicom reports the problem
    dtype = np.uint8 if allocated == 8 else np.dtype("<u2")
    pixels = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    pixels = pixels.reshape(header.rows, header.columns)
    if stored_bits < allocated and int(pixels.max()) >> stored_bits:
        pixels = pixels & np.array((1 << stored_bits) - 1, dtype=dtype)
    return ds, pixels


def _display(data: BytesLike, header: InstanceHeader, options: DecodeOptions) -> DecodedImage:
    native = native_pixels(data, header)
    if native is not None:
        header_ds, stored = native
        k = 1
        if options.reduce:
            k = box_factor(
                header.rows, header.columns, options.model_size, options.reduce_min_scale
            )
        if k > 1:
            stored = box_average(stored, k)
        return DecodedImage(stored_to_display(header_ds, stored), 0, k)
    ds, _ = parse_dataset(data, stop_before_pixels=False)
    if "PixelData" not in ds:
        raise InvalidStudy(f"instance {header.index}: the DICOM file has no pixel data")
    frame = _check_codestream(ds, header)
    if not options.reduce:
        return DecodedImage(decode_display(ds), 0)
    if frame is not None:
        reduced = _reduced_display(ds, header, frame, options)
        if reduced is not None:
            return reduced
    k = box_factor(header.rows, header.columns, options.model_size, options.reduce_min_scale)
    if k == 1:
        return DecodedImage(decode_display(ds), 0)
    return DecodedImage(stored_to_display(ds, box_average(decode_stored(ds), k)), 0, k)


def decode_instance(
    data: BytesLike, header: InstanceHeader, options: DecodeOptions
) -> DecodedImage:
    """Decode the chosen instance to a display image (header limits already checked).

    Any failure is the data's: INVALID_ARGUMENT naming the reason; a MemoryError propagates (the
    decode worker reports it with its memory limit).
    """
    where = f"instance {header.index}"
    if header.inflated is not None:  # a deflated file: decode the inflated data set
        data = header.inflated
    try:
        decoded = _display(data, header, options)
    except TriageError:
        raise
    except DicomDecodeError as exc:
        if isinstance(exc.__cause__, MemoryError):
            raise MemoryError from None  # the caller names its memory limit
        if exc.__cause__ is None:  # triage_common's own message: names attributes, not values
            raise InvalidStudy(f"{where}: {exc}") from None
        raise InvalidStudy(
            f"{where}: pixel data cannot be decoded "
            f"({type(exc.__cause__).__name__}; truncated or corrupt)"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # e.g. a non-numeric RescaleSlope or window
        raise InvalidStudy(
            f"{where}: the image attributes cannot be interpreted ({type(exc).__name__})"
        ) from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a native codec's panic (e.g. pyo3's PanicException)
        raise DecoderFailed(
            f"{where}: the decoder failed on the pixel data ({type(exc).__name__}): "
            "malformed or hostile data"
        ) from None
    if not np.isfinite(decoded.display).all():
        raise InvalidStudy(f"{where}: decoded pixel values are not finite")
    return decoded
