"""The real DICOM files that pydicom-data ships (RG1 chest CR, RG3 tibia, CT, MR, US, ...)."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file


def testdata(name: str) -> Path:
    """Path of a file from pydicom-data (the real RG1 chest CR, RG3 tibia, CT, MR, US)."""
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"pydicom-data does not ship {name}")
    return Path(str(found))


def rg1_paths() -> dict[str, Path]:
    """The real RG1 chest CR in its four encodings (UNCI, UNCR, J2KI, J2KR)."""
    return {n: testdata(f"RG1_{n}.dcm") for n in ("UNCI", "UNCR", "J2KI", "J2KR")}
