"""Dataset files besides the DICOM images: mask archives and the ``labels.csv`` table.

``np.savez_compressed`` stamps the current time into its zip entries; masks are written here
as the same kind of archive (one deflated ``.npy`` per label) with a fixed timestamp instead, so
the same dataset is byte-identical on every run; ``np.load`` reads it like any ``.npz``. The
all-zero mask of an absent finding is compressed once per image size.
"""

from __future__ import annotations

import csv
import functools
import io
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from triage_common.labels import DEFAULT_LABELS, severity_column, truth_column

_DOS_DATE: Final = (0 << 9) | (1 << 5) | 1  # 1980-01-01
_DOS_TIME: Final = 0
_LEVEL: Final = 1

#: Columns of ``labels.csv``, in order.
LABEL_COLUMNS: Final[tuple[str, ...]] = (
    "path",
    "patient_id",
    "study_uid",
    "series_uid",
    "sop_uid",
    "site",
    "view",
    "portable",
    "marker",
    *(c for label in DEFAULT_LABELS for c in (label, severity_column(label), truth_column(label))),
    "sex",
    "age",
)


@functools.lru_cache(maxsize=16)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(np.zeros(shape, dtype=np.bool_))
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _npy_entry(header: bytes, body: bytes | memoryview) -> tuple[int, int, bytes]:
    """(crc32, size, raw-deflated bytes) of a .npy file made of ``header`` and ``body``."""
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    data = compressor.compress(header) + compressor.compress(body) + compressor.flush()
    return zlib.crc32(body, zlib.crc32(header)), len(header) + len(body), data


@functools.lru_cache(maxsize=16)
def _empty_entry(shape: tuple[int, ...]) -> tuple[int, int, bytes]:
    return _npy_entry(_npy_header(shape), bytes(int(np.prod(shape))))


def _entry(mask: npt.NDArray[np.bool_]) -> tuple[int, int, bytes]:
    """The zip entry of the .npy file holding ``mask`` (all-zero masks come from a cache)."""
    if not mask.any():
        return _empty_entry(mask.shape)
    body = np.ascontiguousarray(mask, dtype=np.bool_).view(np.uint8).data.cast("B")
    return _npy_entry(_npy_header(mask.shape), body)


def _zip(entries: list[tuple[str, tuple[int, int, bytes]]]) -> bytes:
    """A plain deflate zip archive with fixed timestamps (what ``np.load`` reads)."""
    local, central = bytearray(), bytearray()
    for name, (crc, size, data) in entries:
        encoded = name.encode("utf-8")
        common = struct.pack(
            "<HHHHHIIIH", 20, 0, 8, _DOS_TIME, _DOS_DATE, crc, len(data), size, len(encoded)
        )
        central += struct.pack("<IH", 0x02014B50, 0x031E) + common
        central += struct.pack("<HHHHII", 0, 0, 0, 0, 0o100644 << 16, len(local)) + encoded
        local += struct.pack("<I", 0x04034B50) + common + struct.pack("<H", 0) + encoded + data
    end = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(local), 0
    )
    return bytes(local + central + end)


def write_masks(path: Path, masks: Mapping[str, npt.NDArray[np.bool_]]) -> None:
    """Write boolean masks as a deterministic compressed ``.npz`` (one array per key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_zip([(f"{name}.npy", _entry(mask)) for name, mask in masks.items()]))


def write_labels(path: Path, rows: Iterable[Mapping[str, object]]) -> int:
    """Write ``labels.csv`` (columns ``LABEL_COLUMNS``); returns the number of rows."""
    count = 0
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(LABEL_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row[key] for key in LABEL_COLUMNS})
            count += 1
    return count
