"""Patient-disjoint splits: one part per patient, held-out sites apart, fractions checked."""

from __future__ import annotations

import pytest

from models.splits import SplitFractions, assign_patients


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
    assert SplitFractions.parse("60/20/20").test == pytest.approx(0.2, rel=1e-6)
