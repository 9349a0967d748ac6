"""The decode stage: header limits, codestream checks, reduced-resolution reading, and
train-time / serve-time preprocessing agreeing on the same DICOM file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from service.core.errors import InvalidStudy, TooLarge
from service.stages.decode import DecodeOptions, decode_instance, native_pixels
from service.stages.header import read_header
from tests.helpers.dicom_factory import chest, file_bytes, huge_header, to_bytes
from triage_common.preprocess import PreprocessSpec, preprocess, preprocess_file

SPEC = PreprocessSpec(size=224)


def serve_input(path: Path, reduce: bool) -> np.ndarray:
    """The model input the service builds from the file's bytes."""
    data = path.read_bytes()
    header = read_header(data, 0, max_pixels=50_000_000)
    options = DecodeOptions(max_pixels=50_000_000, model_size=SPEC.size, reduce=reduce)
    return preprocess(decode_instance(data, header, options).display, SPEC)


def test_header_limit_before_allocation() -> None:
    """read_header refuses a 65535 x 65535 claim from the header alone."""
    with pytest.raises(TooLarge, match="65535 x 65535"):
        read_header(huge_header(), 0, max_pixels=100_000_000)
    header = read_header(huge_header(100, 100), 0, max_pixels=100_000_000)
    assert header.pixels == 10_000 and header.has_pixel_data


def test_codestream_must_match_header() -> None:
    """A JPEG 2000 frame whose SIZ disagrees with Rows/Columns is refused before decoding."""
    ds = pydicom.dcmread(io.BytesIO(file_bytes("RG1_J2KR.dcm")))
    ds.Rows = 100
    buffer = io.BytesIO()
    ds.save_as(buffer)
    data = buffer.getvalue()
    header = read_header(data, 0, 10**9)
    with pytest.raises(
        InvalidStudy, match="codestream is 1841 x 1955 but the header says 1841 x 100"
    ):
        decode_instance(data, header, DecodeOptions(10**9, 64))


def test_reduced_decode_matches_full_display() -> None:
    """The reduced RG1 display equals a block-average of the full one to within a few percent."""
    data = file_bytes("RG1_J2KR.dcm")
    header = read_header(data, 0, 10**9)
    full = decode_instance(data, header, DecodeOptions(10**9, 224, reduce=False))
    reduced = decode_instance(data, header, DecodeOptions(10**9, 224, reduce_min_scale=2.0))
    assert full.reduce_level == 0 and reduced.reduce_level == 2
    assert reduced.display.shape == (489, 461)
    h, w = 488, 460
    blocks = full.display[: h * 4, : w * 4].reshape(h, 4, w, 4).mean(axis=(1, 3))
    # A bound on the mean error, not a per-pixel tolerance: wavelet levels are not box filters.
    assert float(np.abs(blocks - reduced.display[:h, :w]).mean()) < 0.01


def test_uncompressed_chest_decodes() -> None:
    """A small uncompressed chest copy decodes to a display image in [0, 1]."""
    data = chest(factor=8)
    header = read_header(data, 0, 10**9)
    decoded = decode_instance(data, header, DecodeOptions(10**9, 64))
    assert decoded.display.shape == (header.rows, header.columns)
    assert float(decoded.display.min()) >= 0.0 and float(decoded.display.max()) <= 1.0


def test_native_pixels_match_pydicom() -> None:
    """The zero-copy native path returns exactly pydicom's pixel_array (unused bits cleared)."""
    ds = pydicom.dcmread(io.BytesIO(chest(factor=8)))
    ds.BitsStored, ds.HighBit = 12, 11
    noisy = ds.pixel_array.astype(np.uint16) | np.uint16(0xA000)  # garbage above BitsStored
    ds.PixelData = noisy.tobytes()
    for data in (file_bytes("RG1_UNCR.dcm"), chest(factor=8), to_bytes(ds)):
        header = read_header(data, 0, 10**9)
        native = native_pixels(data, header)
        assert native is not None
        expected = pydicom.dcmread(io.BytesIO(data)).pixel_array
        assert np.array_equal(native[1], expected)  # integers: exact is the point
    for name in ("CT_small.dcm", "RG1_J2KR.dcm", "MR_small_RLE.dcm"):  # signed or compressed
        data = file_bytes(name)
        assert native_pixels(data, read_header(data, 0, 10**9)) is None


def test_box_reduced_uncompressed_close_to_full() -> None:
    """Uncompressed RG1 averaged over 4 x 4 blocks gives a display close to the full one."""
    data = file_bytes("RG1_UNCR.dcm")
    header = read_header(data, 0, 10**9)
    full = decode_instance(data, header, DecodeOptions(10**9, 224, reduce=False))
    reduced = decode_instance(data, header, DecodeOptions(10**9, 224))
    assert (full.box, reduced.box) == (1, 4) and reduced.display.shape == (488, 460)
    blocks = full.display[: 488 * 4, : 460 * 4].reshape(488, 4, 460, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(reduced.display, blocks, rtol=0, atol=1e-3, equal_nan=False)


@pytest.mark.parametrize("name", ["UNCR", "J2KR"])
def test_full_resolution_serving_matches_training_to_1e6(
    rg1_paths: dict[str, Path], name: str
) -> None:
    """With reduced decoding off, serving builds the training input to within 1e-6."""
    train = preprocess_file(rg1_paths[name], SPEC)
    np.testing.assert_allclose(
        serve_input(rg1_paths[name], reduce=False), train, rtol=0, atol=1e-6, equal_nan=False
    )


@pytest.mark.parametrize("name", ["UNCR", "J2KR"])
def test_reduced_decoding_stays_close_to_training(rg1_paths: dict[str, Path], name: str) -> None:
    """The default reduced-resolution decode differs from the training input by little.

    Inputs are normalised with std 0.25, so 0.02 here is 0.005 of the display range.
    """
    train = preprocess_file(rg1_paths[name], SPEC)
    reduced = serve_input(rg1_paths[name], reduce=True)
    # A bound on the mean error over the image, not a per-pixel tolerance.
    assert np.abs(reduced - train).mean() <= 0.02
