"""Eligibility: the frontal-image selection rule and the reason each refusal names."""

from __future__ import annotations

import dataclasses

import pytest

from service.config import EligibilityConfig
from service.core.errors import InvalidStudy, NotEligible
from service.core.types import InstanceHeader
from service.stages.eligibility import select_frontal, study_uid

RULES = EligibilityConfig()


def _header(index: int, **kw: object) -> InstanceHeader:
    """A frontal PA chest CR header (100 x 100) with ``kw`` replacing fields."""
    base = InstanceHeader(
        index=index,
        sop_instance_uid=f"1.2.3.{index}",
        study_instance_uid="1.2.3",
        modality="CR",
        body_part="CHEST",
        view_position="PA",
        photometric="MONOCHROME2",
        rows=100,
        columns=100,
        samples_per_pixel=1,
        frames=1,
        instance_number=index + 1,
        has_pixel_data=True,
        transfer_syntax="1.2.840.10008.1.2.1",
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_selection_rule() -> None:
    """PA beats AP, then the larger image, then the lower InstanceNumber; laterals are ignored."""
    headers = [
        _header(0, view_position="AP", rows=4000, columns=4000),
        _header(1, view_position="LL"),
        _header(2, view_position="PA", instance_number=9),
        _header(3, view_position="PA", instance_number=2),
        _header(4, view_position="PA", instance_number=5, rows=200),
        _header(5, view_position="", rows=5000),
    ]
    selection = select_frontal(headers, RULES)
    assert selection.chosen.index == 4
    assert {i.index: i.reason for i in selection.ignored}[1] == "lateral view (LL)"
    selection = select_frontal(headers[2:4], RULES)
    assert selection.chosen.index == 3
    assert select_frontal([headers[5]], RULES).notes == (
        "ViewPosition missing (treated as frontal)",
    )


def test_eligibility_reasons() -> None:
    """Each rule names its reason; missing body part is allowed unless configured otherwise."""
    cases = {
        "modality CT is not CR or DX": _header(0, modality="CT"),
        "body part KNEE is not CHEST": _header(0, body_part="KNEE"),
        "PhotometricInterpretation RGB is not grayscale": _header(0, photometric="RGB"),
        "view position RLO is not frontal (PA or AP)": _header(0, view_position="RLO"),
    }
    for reason, header in cases.items():
        with pytest.raises(NotEligible, match=reason.replace("(", r"\(").replace(")", r"\)")):
            select_frontal([header], RULES)
    missing = _header(0, body_part="")
    assert select_frontal([missing], RULES).notes == ("BodyPartExamined missing (allowed)",)
    strict = dataclasses.replace(RULES, allow_missing_body_part=False)
    with pytest.raises(NotEligible, match="BodyPartExamined is missing"):
        select_frontal([missing], strict)
    with pytest.raises(InvalidStudy, match="no pixel data"):
        select_frontal([_header(0, has_pixel_data=False, modality="CT")], RULES)
    with pytest.raises(InvalidStudy, match="2 different studies"):
        study_uid([_header(0), _header(1, study_instance_uid="9.9")])
