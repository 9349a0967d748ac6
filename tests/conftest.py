"""Fixtures shared by every suite: the real DICOM files that pydicom-data ships."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.bundle_factory import build_bundle_subprocess


def testdata(name: str) -> Path:
    """Path of a file from pydicom-data (the real RG1 chest CR, RG3 tibia, CT, MR, US)."""
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"pydicom-data does not ship {name}")
    return Path(str(found))


@pytest.fixture(name="rg1_paths")
def fixture_rg1_paths() -> dict[str, Path]:
    """The real RG1 chest CR in its four encodings."""
    return {n: testdata(f"RG1_{n}.dcm") for n in ("UNCI", "UNCR", "J2KI", "J2KR")}


@pytest.fixture(name="bundle_path", scope="session")
def fixture_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact random-init 64 px bundle exported by ``triage export onnx`` (torch stays out).

    Built once per session and shared read-only by the service, worklist and Dockerfile tests.
    """
    return build_bundle_subprocess(tmp_path_factory.mktemp("test-bundle") / "bundle")
