"""DICOM files written by ``triage synth`` read back with the right tags and exact pixels."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from models.phantoms.dicom_writer import (
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    build_dataset,
    encode,
)
from models.phantoms.generate import software_version
from models.phantoms.render import RenderedImage, render_frontal, render_lateral
from models.phantoms.study import StudySpec
from tests.models.phantoms.phantom_data import SMALL_SIZE, SmallDataset

SYNTAX_UIDS = {
    "explicit": "1.2.840.10008.1.2.1",
    "rle": "1.2.840.10008.1.2.5",
    "j2k": "1.2.840.10008.1.2.4.90",
}


def test_every_file_has_the_tags_labels_csv_promises(small_dataset: SmallDataset) -> None:
    """Modality, SOP class, body part, view, photometric, bits and UIDs agree with labels.csv."""
    assert len(small_dataset.rows) > len(small_dataset.specs)  # some studies have a lateral
    for row in small_dataset.rows:
        ds = pydicom.dcmread(small_dataset.root / row["path"])
        spec = small_dataset.spec_for(row["sop_uid"])
        site = spec.site
        assert ds.Modality == site.modality
        assert ds.SOPClassUID == (
            DX_PRESENTATION_STORAGE if site.modality == "DX" else CR_IMAGE_STORAGE
        )
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.TransferSyntaxUID == SYNTAX_UIDS[spec.syntax]
        assert ds.BodyPartExamined == "CHEST"
        assert ds.ViewPosition == row["view"]
        assert ds.PhotometricInterpretation == site.photometric
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (
            16,
            site.bits_stored,
            site.bits_stored - 1,
        )
        assert ds.PixelRepresentation == 0
        assert (ds.Rows, ds.Columns) == (SMALL_SIZE, SMALL_SIZE)
        assert ds.StudyInstanceUID == row["study_uid"]
        assert ds.SeriesInstanceUID == row["series_uid"]
        assert ds.SOPInstanceUID == row["sop_uid"] == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.PatientID == row["patient_id"]
        assert ds.InstitutionName == row["site"]
        # decimal strings of integers written by the generator: exact
        assert float(ds.WindowWidth) == 2**site.bits_stored
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
        if site.modality == "DX":
            assert ds.PresentationIntentType == "FOR PRESENTATION"
            assert ds.ImageLaterality == "U"
            expected = "INVERSE" if site.photometric == "MONOCHROME1" else "IDENTITY"
            assert ds.PresentationLUTShape == expected


def _rendered(dataset: SmallDataset, row: dict[str, str]) -> tuple[StudySpec, RenderedImage]:
    """The spec of a labels.csv row and its image rendered again (frontal or lateral)."""
    spec = dataset.spec_for(row["sop_uid"])
    if row["view"] == "LL":
        return spec, render_lateral(spec, SMALL_SIZE)
    return spec, render_frontal(spec, SMALL_SIZE)


def test_lossless_syntaxes_give_back_the_rendered_pixels(small_dataset: SmallDataset) -> None:
    """Explicit VR, RLE and JPEG 2000 lossless files decode to exactly the rendered integers."""
    seen = set()
    for row in small_dataset.rows:
        spec, rendered = _rendered(small_dataset, row)
        pixels = pydicom.dcmread(small_dataset.root / row["path"]).pixel_array
        assert pixels.dtype == np.uint16
        np.testing.assert_array_equal(pixels, rendered.stored)
        seen.add(spec.syntax)
    assert seen == {"explicit", "rle", "j2k"}


def test_files_are_the_bytes_pydicom_save_as_writes(small_dataset: SmallDataset) -> None:
    """The fast writer's files equal ``save_as`` of the same dataset (CR, DX, every syntax)."""
    kinds = set()
    for row in small_dataset.rows:
        spec, rendered = _rendered(small_dataset, row)
        ds = build_dataset(spec, rendered, software_version())
        encode(ds, rendered, spec.syntax)
        expected = io.BytesIO()
        ds.save_as(expected, enforce_file_format=True)
        assert (small_dataset.root / row["path"]).read_bytes() == expected.getvalue()
        kinds.add((spec.site.modality, spec.syntax, rendered.view != "LL"))
    assert {k[0] for k in kinds} == {"CR", "DX"} and {k[1] for k in kinds} == set(SYNTAX_UIDS)
    assert {k[2] for k in kinds} == {True, False}


def test_monochrome1_is_stored_inverted(small_dataset: SmallDataset) -> None:
    """A MONOCHROME1 image stores max minus the MONOCHROME2 value of the same rendering."""
    spec = next(s for s in small_dataset.specs if s.site.photometric == "MONOCHROME1")
    inverted = render_frontal(spec, SMALL_SIZE)
    plain = render_frontal(spec, SMALL_SIZE, photometric="MONOCHROME2")
    top = (1 << spec.site.bits_stored) - 1
    assert inverted.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(
        inverted.stored.astype(np.int64), top - plain.stored.astype(np.int64)
    )
    np.testing.assert_array_equal(inverted.image, plain.image)


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk (dcmdump) is not installed")
def test_dcmtk_reads_a_written_file(small_dataset: SmallDataset) -> None:
    """DCMTK's dcmdump parses a written file and sees the chest view."""
    path = small_dataset.root / small_dataset.rows[0]["path"]
    result = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, check=True)
    assert "CHEST" in result.stdout
    assert small_dataset.rows[0]["sop_uid"] in result.stdout


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) is not installed"
)
def test_dciodvfy_finds_no_error_or_warning(small_dataset: SmallDataset) -> None:
    """dicom3tools' IOD validator accepts every CR and DX file (all syntaxes, laterals too)."""
    iods = set()
    for row in small_dataset.rows:
        result = subprocess.run(
            ["dciodvfy", str(small_dataset.root / row["path"])], capture_output=True, text=True
        )
        lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()]
        problems = [line for line in lines if line.startswith(("Error", "Warning"))]
        assert problems == [], (row["path"], problems)
        iods.add(lines[0])
    assert iods == {"CRImage", "DXImageForPresentation"}
