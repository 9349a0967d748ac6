"""The one labelled-set reader of training and calibration, on hand-written phantom folders and
CSVs (CheXpert and MIMIC-CXR style too): frontal rows, reported labels, the uncertain-label
policies, the tolerated gaps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triage_common.datasets import (
    load_csv_dataset,
    load_dataset,
    load_phantoms,
    preprocessed_images,
)
from triage_common.labels import DEFAULT_LABELS, severity_column, truth_column
from triage_common.preprocess import PreprocessSpec

NAN = math.nan
LABELS = DEFAULT_LABELS  # Cardiomegaly, Edema, Pleural Effusion, Pneumothorax


def _phantom_folder(root: Path, *, with_meta: bool = True) -> Path:
    """A ``triage synth``-style folder by hand: four images (one lateral), -1 and blank cells."""
    header = ["path", "patient_id", "study_uid", "sop_uid", "site", "view", "portable"]
    for label in LABELS:
        header += [label, severity_column(label), truth_column(label)]
    # (path, patient, study, sop, site, view, portable, reported labels, true labels)
    rows = [
        ("a.dcm", "P1", "S1", "1.1", "North", "PA", "0", ("1", "0", "-1", "0"), (1, 0, 1, 0)),
        ("b.dcm", "P1", "S1", "1.2", "North", "LL", "0", ("1", "0", "0", "0"), (1, 0, 0, 0)),
        ("c.dcm", "", "S2", "1.3", "Lake", "AP", "1", ("0", "", "1", "-1"), (0, 1, 1, 0)),
        ("d.dcm", "P3", "S3", "1.4", "", "PA", "", ("0", "1", "0", "0"), (0, 1, 0, 0)),
    ]
    lines = [",".join(header)]
    for path, patient, study, sop, site, view, portable, reported, true in rows:
        cells = [path, patient, study, sop, site, view, portable]
        for r, t in zip(reported, true, strict=True):
            cells += [r, "0.5000", str(t)]
        lines.append(",".join(cells))
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    if with_meta:
        sites = [{"name": "North", "heldout": False}, {"name": "Lake", "heldout": True}]
        meta = {"scenario": {"name": "hand", "sites": sites}, "seed": 7}
        (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_calibration_truth_is_the_reported_labels_with_nan_only_for_uncertain(
    tmp_path: Path,
) -> None:
    """Under "ignore" the labels are the reported ones (blank 0), NaN exactly where a cell is -1."""
    table = load_dataset(_phantom_folder(tmp_path / "set"), LABELS)
    expected = np.array([[1, 0, NAN, 0], [0, 0, 1, NAN], [0, 1, 0, 0]], dtype=float)
    assert np.array_equal(table.labels, expected, equal_nan=True)
    assert [p.name for p in table.paths] == ["a.dcm", "c.dcm", "d.dcm"]  # the lateral is dropped
    assert table.label_names == LABELS and table.kind == "phantom"
    assert table.patient_ids == ("P1", "S2", "P3")  # a blank patient falls back to the study
    assert table.sites == ("North", "Lake", "unknown")
    assert table.sop_uids == ("1.1", "1.3", "1.4")
    assert table.heldout.tolist() == [False, True, False] and table.heldout_sites == ("Lake",)
    assert table.description == {
        "kind": "phantom",
        "path": str(tmp_path / "set"),
        "scenario": "hand",
        "seed": 7,
        "heldout_sites": ["Lake"],
    }


def test_training_policies_and_noise_free_columns_on_a_phantom_folder(tmp_path: Path) -> None:
    """U-Ones and U-Zeros replace the -1 cells; ``true_labels`` are the noise-free columns."""
    folder = _phantom_folder(tmp_path / "set")
    ones = load_phantoms(folder, uncertain="ones")
    zeros = load_phantoms(folder, uncertain="zeros")
    assert ones.labels.tolist() == [[1, 0, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]
    assert zeros.labels.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]]
    assert ones.true_labels is not None and ones.severity is not None
    assert ones.true_labels.tolist() == [[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0]]
    assert np.all(ones.severity == 0.5)  # parsed from the "0.5000" cells, not computed: exact
    assert ones.portable is not None
    assert np.array_equal(ones.portable, [0.0, 1.0, NAN], equal_nan=True)
    sub = ones.subset([2, 0])
    assert sub.patient_ids == ("P3", "P1") and sub.true_labels is not None
    assert sub.true_labels.tolist() == [[0, 1, 0, 0], [1, 0, 1, 0]]


def test_a_bare_labels_csv_is_read_with_defaults(tmp_path: Path) -> None:
    """No dataset.json, no view, patient or site column: all rows PA, study as patient, unknown."""
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "labels.csv").write_text("path,study_uid,Edema\nx.dcm,S1,1\ny.dcm,S2,-1\n")
    table = load_dataset(folder, ("Edema",))
    assert np.array_equal(table.labels, [[1.0], [NAN]], equal_nan=True)
    assert table.patient_ids == ("S1", "S2") and table.sites == ("unknown", "unknown")
    assert table.views == ("PA", "PA") and table.heldout_sites == () and not table.heldout.any()
    assert table.true_labels is None and table.severity is None


def test_a_missing_label_column_is_named(tmp_path: Path) -> None:
    """A label the caller asks for (e.g. one of the bundle's) that the file lacks is an error."""
    folder = _phantom_folder(tmp_path / "set")
    with pytest.raises(ValueError, match=r"labels.csv has no column for labels \['Atelectasis'\]"):
        load_dataset(folder, ("Edema", "Atelectasis"))


def test_a_bad_phantom_cell_names_the_file_and_line(tmp_path: Path) -> None:
    """A reported label outside 1, 0, -1, blank is an error naming labels.csv and its line."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "labels.csv").write_text("path,study_uid,Edema\nx.dcm,S1,1\ny.dcm,S2,yes\n")
    with pytest.raises(ValueError, match=r"labels.csv:3: label value 'yes'"):
        load_dataset(folder, ("Edema",))


def test_csv_sites_come_from_a_site_column(tmp_path: Path) -> None:
    """A CSV's ``site`` column names the site; a blank cell or no column gives ``csv``."""
    with_site = tmp_path / "sites.csv"
    with_site.write_text("path,patient_id,site,Edema\na.png,1,Lake,1\nb.png,2,,-1\n")
    table = load_dataset(with_site, ("Edema",))
    assert table.sites == ("Lake", "csv") and table.kind == "csv"
    assert np.array_equal(table.labels, [[1.0], [NAN]], equal_nan=True)
    without = tmp_path / "plain.csv"
    without.write_text("path,patient_id,Edema\na.png,1,0\n")
    assert load_dataset(without, ("Edema",)).sites == ("csv",)


def test_preprocessed_images_are_cached_atomically_and_reused(tmp_path: Path) -> None:
    """The preprocessed array is stored once as .npy (no temporary file left) and read back."""
    for name, value in (("a.png", 40), ("b.png", 200)):
        Image.fromarray(np.full((32, 32), value, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "set.csv").write_text("path,patient_id,Edema\na.png,1,1\nb.png,2,0\n")
    table = load_dataset(tmp_path / "set.csv", ("Edema",))
    spec = PreprocessSpec(size=16)
    first = preprocessed_images(table, spec, tmp_path / "cache")
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("prep-") and cached[0].suffix == ".npy"
    assert first.shape == (2, 1, 16, 16) and first.dtype == np.float32
    assert np.array_equal(preprocessed_images(table, spec, tmp_path / "cache"), first)
    assert np.array_equal(np.load(cached[0]), first)


@pytest.fixture(name="chexpert_csv")
def fixture_chexpert_csv(tmp_path: Path) -> Path:
    """A CheXpert-style CSV with PNG images, uncertain and blank labels and a lateral."""
    root = tmp_path / "CheXpert-v1.0-small"
    rows = ["Path,Sex,Age,Frontal/Lateral,AP/PA,Cardiomegaly,Edema,Pleural Effusion,Pneumothorax"]
    specs = [
        ("patient00001/study1/view1_frontal.png", "Frontal", "1.0", "-1.0", "", "0.0"),
        ("patient00001/study1/view2_lateral.png", "Lateral", "1.0", "-1.0", "", "0.0"),
        ("patient00002/study1/view1_frontal.png", "Frontal", "0.0", "1.0", "-1.0", ""),
    ]
    for rel, view, *labels in specs:
        path = root / "train" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40), 128, dtype=np.uint8)).save(path)
        rows.append(f"CheXpert-v1.0-small/train/{rel},F,50,{view},PA,{','.join(labels)}")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def test_chexpert_csv_uignore_policy(chexpert_csv: Path) -> None:
    """U-Ignore masks -1 labels, blanks count as negative, laterals are dropped."""
    table = load_dataset(chexpert_csv)
    assert len(table) == 2
    assert table.patient_ids == ("patient00001", "patient00002")
    assert (  # labels parsed from the cells: exact
        table.labels[0, 0] == 1.0 and math.isnan(table.labels[0, 1]) and table.labels[0, 2] == 0.0
    )
    assert all(p.exists() for p in table.paths)


def test_chexpert_csv_uones_policy(chexpert_csv: Path) -> None:
    """U-Ones turns uncertain labels into positives."""
    table = load_csv_dataset(chexpert_csv, uncertain="ones")
    assert table.labels[0, 1] == 1.0 and table.labels[1, 2] == 1.0  # parsed labels: exact


def test_mimic_style_csv_uses_subject_and_view(tmp_path: Path) -> None:
    """A MIMIC-style CSV takes patients from subject_id and keeps PA/AP views only."""
    csv_path = tmp_path / "mimic.csv"
    csv_path.write_text(
        "path,subject_id,study_id,ViewPosition,Edema\n"
        "files/p10/a.dcm,10,s1,PA,1\nfiles/p10/b.dcm,10,s1,LATERAL,1\nfiles/p11/c.dcm,11,s2,AP,0\n"
    )
    table = load_csv_dataset(csv_path)
    assert table.label_names == ("Edema",)
    assert table.patient_ids == ("10", "11") and table.study_uids == ("s1", "s2")


def test_bad_label_value_names_the_line(tmp_path: Path) -> None:
    """A label cell outside 1, 0, -1, blank is an error naming the file and line."""
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("path,patient_id,Edema\na.png,1,2\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        load_csv_dataset(csv_path)
