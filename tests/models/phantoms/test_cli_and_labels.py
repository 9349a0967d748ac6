"""`triage synth`, `triage contact-sheet` and `triage bench synth`, and the labels they write."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from models.phantoms import render
from models.phantoms.outputs import LABEL_COLUMNS
from models.phantoms.render import render_frontal
from models.phantoms.scenario import Scenario
from models.phantoms.study import plan_dataset
from tests.models.phantoms.phantom_data import SMALL_STUDIES, SmallDataset, read_rows
from triage_common.anatomy import ANATOMY_KEYS
from triage_common.labels import DEFAULT_LABELS, severity_column, truth_column
from triage_tools.cli import main


def test_synth_command_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`triage synth OUT` returns 0 and writes DICOM, masks, labels.csv, dataset.json, a summary."""
    out = tmp_path / "data"
    code = main(["synth", str(out), "--studies", "5", "--size", "64", "--seed", "3",
                 "--syntax", "rle", "--lateral-fraction", "0"])  # fmt: skip
    assert code == 0
    rows = read_rows(out)
    assert len(rows) == 5 and all((out / r["path"]).is_file() for r in rows)
    assert len(list((out / "masks").glob("*.npz"))) == 5
    meta = json.loads((out / "dataset.json").read_text())
    assert (meta["seed"], meta["size"], meta["syntax"]) == (3, 64, "rle")
    assert meta["counts"]["studies"] == 5 and meta["scenario"]["name"] == "confounded"
    assert meta["software"]["version"]
    assert set(meta["summary"]) <= {s["name"] for s in meta["scenario"]["sites"]}
    printed = capsys.readouterr().out
    assert "PORTABLE marker vs disease per site" in printed and "phi" in printed


def test_contact_sheet_command_writes_a_png(small_dataset: SmallDataset, tmp_path: Path) -> None:
    """`triage contact-sheet DATA --out PNG` returns 0 and writes a PNG image."""
    png = tmp_path / "sheet.png"
    assert (
        main(["contact-sheet", str(small_dataset.root), "--out", str(png), "--per-row", "3"]) == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_command_prints_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    """`triage bench synth` returns 0 and prints studies per second for both stages."""
    assert main(["bench", "synth", "--studies", "2", "--size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "studies/s" in printed and "render + write" in printed


def test_labels_csv_columns_and_lateral_rows(small_dataset: SmallDataset) -> None:
    """labels.csv has the documented columns; a lateral row repeats its study's labels."""
    header = (small_dataset.root / "labels.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == LABEL_COLUMNS
    assert LABEL_COLUMNS[:9] == ("path", "patient_id", "study_uid", "series_uid", "sop_uid",
                                 "site", "view", "portable", "marker")  # fmt: skip
    by_study: dict[str, list[dict[str, str]]] = {}
    for row in small_dataset.rows:
        by_study.setdefault(row["study_uid"], []).append(row)
    assert len(by_study) == SMALL_STUDIES
    label_keys = [c for c in LABEL_COLUMNS if c.split("_")[0] in DEFAULT_LABELS]
    for rows in by_study.values():
        views = [r["view"] for r in rows]
        assert views[0] in ("PA", "AP") and views[1:] in ([], ["LL"])
        assert all(r[k] == rows[0][k] for r in rows for k in label_keys)
        for label in DEFAULT_LABELS:
            severity = float(rows[0][severity_column(label)])
            assert (severity > 0) == (rows[0][truth_column(label)] == "1")


def test_masks_match_the_truth(small_dataset: SmallDataset) -> None:
    """Each frontal image has a mask per label, image-sized, non-empty exactly when present."""
    for row in small_dataset.rows:
        if row["view"] == "LL":
            assert not (small_dataset.root / "masks" / f"{row['sop_uid']}.npz").exists()
            continue
        with np.load(small_dataset.root / "masks" / f"{row['sop_uid']}.npz") as masks:
            assert sorted(masks.files) == sorted(DEFAULT_LABELS)
            for label in DEFAULT_LABELS:
                mask = masks[label]
                assert mask.dtype == np.bool_ and mask.shape == (128, 128)
                assert mask.any() == (row[truth_column(label)] == "1")


def test_anatomy_masks_say_where_lungs_and_burned_in_text_were_drawn(
    small_dataset: SmallDataset,
) -> None:
    """Each frontal image has masks/anatomy/<sop>.npz with every ANATOMY_KEYS mask at image
    size: lungs inside the body, the PORTABLE text exactly on portable films, the marker always,
    and the text masks covering pixels the label changed."""
    for row in small_dataset.rows:
        path = small_dataset.root / "masks" / "anatomy" / f"{row['sop_uid']}.npz"
        if row["view"] == "LL":
            assert not path.exists()
            continue
        with np.load(path) as masks:
            assert list(masks.files) == list(ANATOMY_KEYS)
            m = {k: masks[k] for k in masks.files}
        assert all(v.dtype == np.bool_ and v.shape == (128, 128) for v in m.values())
        assert np.array_equal(m["lungs"], m["lung_right"] | m["lung_left"])
        assert np.array_equal(m["text"], m["text_portable"] | m["text_marker"])
        assert 0.15 < m["lungs"].mean() < 0.6 and (m["lungs"] & ~m["body"]).mean() < 0.01
        assert m["text_portable"].any() == (row["portable"] == "1") and m["text_marker"].any()
        # the patient's right lung is drawn on the image's left
        cols = np.arange(128)
        assert cols[m["lung_right"].any(axis=0)].mean() < cols[m["lung_left"].any(axis=0)].mean()


def test_the_burned_in_text_mask_covers_what_the_label_changed(
    confounded: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendering a portable study with and without its labels differs only inside the text
    masks (the masks change no pixel: the image is the one written)."""
    spec = next(s for s in plan_dataset(confounded, 7, 60, size=128) if s.portable)
    with_text = render_frontal(spec, 128)
    assert with_text.anatomy is not None
    monkeypatch.setattr(
        render, "place_text", lambda image, *args, **kwargs: np.zeros(image.shape, dtype=bool)
    )
    without = render_frontal(spec, 128)
    changed = with_text.image != without.image
    assert changed.any() and not (changed & ~with_text.anatomy["text"]).any()


def test_labels_carry_sex_and_age_in_years(small_dataset: SmallDataset) -> None:
    """labels.csv has the patient's sex (F/M) and age at the study, as the DICOM header."""
    import pydicom

    for row in small_dataset.rows[:6]:
        ds = pydicom.dcmread(small_dataset.root / row["path"], stop_before_pixels=True)
        assert row["sex"] == ds.PatientSex in ("F", "M")
        assert int(row["age"]) == int(str(ds.PatientAge)[:3])


def test_patients_have_several_studies_and_synthetic_identifiers(confounded: Scenario) -> None:
    """Patients own 1-3 consecutive studies with stable synthetic name, ID and birth date."""
    specs = plan_dataset(confounded, 1, 300, size=64)
    per_patient = Counter(s.patient.patient_id for s in specs)
    assert max(per_patient.values()) <= 3 and sum(v > 1 for v in per_patient.values()) > 20
    for spec in specs:
        assert spec.patient.name.count("^") == 2 and spec.patient.birth_date < spec.study_date
    dates = [s.study_date for s in specs if s.patient.patient_id == specs[0].patient.patient_id]
    assert dates == sorted(dates)


def test_reader_noise_hits_subtle_findings_hardest(confounded: Scenario) -> None:
    """Reported labels miss low-severity findings far more often than obvious ones."""
    specs = plan_dataset(confounded, 4, 3000, size=64)
    subtle = [s.reported[k] for s in specs for k in DEFAULT_LABELS if 0 < s.severities[k] < 0.1]
    obvious = [s.reported[k] for s in specs for k in DEFAULT_LABELS if s.severities[k] > 0.4]
    assert len(subtle) > 50 and len(obvious) > 50
    assert 1 - np.mean(subtle) > 0.2 > 1 - np.mean(obvious)
