"""Train-time and serve-time preprocessing agree on the same DICOM file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.stages.decode import DecodeOptions, decode_instance, read_header
from triage_common.preprocess import PreprocessSpec, preprocess, preprocess_file

SPEC = PreprocessSpec(size=224)


def serve_input(path: Path, reduce: bool) -> np.ndarray:
    """The model input the service builds from the file's bytes."""
    data = path.read_bytes()
    header = read_header(data, 0, max_pixels=50_000_000)
    options = DecodeOptions(max_pixels=50_000_000, model_size=SPEC.size, reduce=reduce)
    return preprocess(decode_instance(data, header, options).display, SPEC)


@pytest.mark.parametrize("name", ["UNCR", "J2KR"])
def test_full_resolution_serving_matches_training_to_1e6(
    rg1_paths: dict[str, Path], name: str
) -> None:
    """With reduced decoding off, serving builds the training input to within 1e-6."""
    train = preprocess_file(rg1_paths[name], SPEC)
    assert np.abs(serve_input(rg1_paths[name], reduce=False) - train).max() <= 1e-6


@pytest.mark.parametrize("name", ["UNCR", "J2KR"])
def test_reduced_decoding_stays_close_to_training(rg1_paths: dict[str, Path], name: str) -> None:
    """The default reduced-resolution decode differs from the training input by little.

    Inputs are normalised with std 0.25, so 0.02 here is 0.005 of the display range.
    """
    train = preprocess_file(rg1_paths[name], SPEC)
    reduced = serve_input(rg1_paths[name], reduce=True)
    assert np.abs(reduced - train).mean() <= 0.02
