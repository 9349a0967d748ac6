"""The labels-to-codes table shipped with the writers."""

from __future__ import annotations

import json

from pydicom.sr._concepts_dict import concepts

from service.dicom import codes
from triage_common.labels import DEFAULT_LABELS


def test_every_default_label_has_a_concept_and_ps3_16_rows_agree_with_dicom() -> None:
    """The bundle's default labels are all coded; rows marked PS3.16 carry the code and meaning
    DICOM's content mapping resource gives (pydicom's dictionary), and no other meaning; codes
    are unique."""
    assert codes.check_labels(DEFAULT_LABELS) == []
    assert codes.check_labels(["Pneumothorax", "Unicorn"]) == ["Unicorn"]
    rows = json.loads(codes.TABLE.read_text())["labels"]
    known: dict[str, set[str]] = {}
    for entry in concepts["SCT"].values():
        for value, (meaning, _) in entry.items():
            known.setdefault(value, set()).add(meaning.lower())
    for label, row in rows.items():
        if row["source"] == "PS3.16":
            assert known.get(row["value"]) == {row["meaning"].lower()}, label
    values = [row["value"] for row in rows.values()]
    assert len(values) == len(set(values))
    assert codes.label_of("36118008", "SCT") == "Pneumothorax"


def test_fixed_concepts_are_dicom_ones_and_local_codes_are_declared() -> None:
    """Present/Absent, Probability and Threshold Value are the standard codes; the local
    scheme is a private (99) designator with its identification item."""
    dcm = {v: m for entry in concepts["DCM"].values() for v, (m, _) in entry.items()}
    assert dcm[codes.PROBABILITY.value] == "Probability"
    assert dcm[codes.THRESHOLD.value] == "Threshold Value"
    sct = {v: m for entry in concepts["SCT"].values() for v, (m, _) in entry.items()}
    assert (sct[codes.PRESENT.value], sct[codes.ABSENT.value]) == ("Present", "Absent")
    assert codes.LOCAL_SCHEME.startswith("99")
    item = codes.coding_scheme_identification()
    assert item.CodingSchemeDesignator == codes.LOCAL_SCHEME
    dx = codes.modality_code("DX")
    assert dx is not None and dx.meaning == "Digital Radiography"
