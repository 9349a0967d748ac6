"""Patient-disjoint splits and the CheXpert / MIMIC-CXR style CSV loaders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.splits import SplitFractions, assign_patients
from triage_common.datasets import load_csv_dataset, load_dataset


def test_split_is_patient_disjoint_and_near_fractions() -> None:
    """Every patient's studies share one part, and part sizes follow the fractions."""
    patients = [f"P{i // 3}" for i in range(3000)]  # 1000 patients, 3 studies each
    parts = assign_patients(patients, [False] * len(patients), SplitFractions(), seed=1)
    by_patient: dict[str, set[str]] = {}
    for p, part in zip(patients, parts, strict=True):
        by_patient.setdefault(p, set()).add(part)
    assert all(len(s) == 1 for s in by_patient.values())
    share = {
        k: sum(1 for q in by_patient.values() if k in q) / 1000 for k in ("error_model", "test")
    }
    # 1000 patients: binomial SE of a 15% share is ~1.1%; allow 4 SE.
    assert share["error_model"] == pytest.approx(0.15, abs=0.045)
    assert share["test"] == pytest.approx(0.15, abs=0.045)


def test_heldout_site_patients_never_train() -> None:
    """A patient seen at a held-out site goes wholly to the held-out part."""
    patients = ["A", "A", "B", "C"]
    parts = assign_patients(patients, [False, True, False, False], SplitFractions(), seed=0)
    assert parts[0] == parts[1] == "heldout"
    assert "heldout" not in parts[2:]


def test_split_fractions_are_validated() -> None:
    """Fractions that do not sum to one are refused with the values named."""
    with pytest.raises(ValueError, match="sum to 1"):
        SplitFractions(0.5, 0.2, 0.2)
    assert SplitFractions.parse("60/20/20").test == pytest.approx(0.2)


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
    assert (
        table.labels[0, 0] == 1.0 and math.isnan(table.labels[0, 1]) and table.labels[0, 2] == 0.0
    )
    assert all(p.exists() for p in table.paths)


def test_chexpert_csv_uones_policy(chexpert_csv: Path) -> None:
    """U-Ones turns uncertain labels into positives."""
    table = load_csv_dataset(chexpert_csv, uncertain="ones")
    assert table.labels[0, 1] == 1.0 and table.labels[1, 2] == 1.0


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
