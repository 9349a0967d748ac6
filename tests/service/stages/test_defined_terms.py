"""Header values are quoted only when they are defined terms (or configured values)."""

from __future__ import annotations

from service.stages.defined_terms import quoted


def test_defined_terms_are_quoted() -> None:
    """Modality CT, body part EXTREMITY, view RLO, photometric RGB are DICOM defined terms."""
    assert quoted("Modality", "CT") == "CT"
    assert quoted("BodyPartExamined", "EXTREMITY") == "EXTREMITY"
    assert quoted("ViewPosition", "RLO") == "RLO"
    assert quoted("PhotometricInterpretation", "PALETTE COLOR") == "PALETTE COLOR"


def test_other_values_are_withheld_naming_the_attribute() -> None:
    """Free text in a coded attribute is replaced by the attribute's name and a note."""
    shown = quoted("BodyPartExamined", "ZQXACC445566")
    assert "ZQXACC445566" not in shown
    assert shown == "(BodyPartExamined withheld: not a defined term)"


def test_configured_values_are_quoted() -> None:
    """A site's own configured value (e.g. a local body-part code) may be quoted back."""
    assert quoted("BodyPartExamined", "THORAX", configured=("THORAX",)) == "THORAX"
