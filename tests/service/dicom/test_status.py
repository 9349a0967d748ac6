"""The C-STORE status table and the triage outcomes are data, consulted at one boundary."""

from __future__ import annotations

from service.core.errors import (
    Cancelled,
    InvalidStudy,
    NotEligible,
    NotReady,
    Overloaded,
    TooLarge,
)
from service.dicom.status import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    NotAccepted,
    SpoolFull,
    not_eligible_reason,
    store_status,
    triage_outcome,
)


def test_each_exception_has_its_c_store_status() -> None:
    """Full spool and too large: 0xA700; mismatch: 0xA900; unparseable: 0xC000; disk errors:
    0xA700; anything else: 0x0110 (processing failure)."""
    assert store_status(SpoolFull("x")) == OUT_OF_RESOURCES == 0xA700
    assert store_status(TooLarge("x")) == OUT_OF_RESOURCES
    assert store_status(NotAccepted("x")) == DOES_NOT_MATCH == 0xA900
    assert store_status(InvalidStudy("x")) == CANNOT_UNDERSTAND == 0xC000
    assert store_status(OSError("disk")) == OUT_OF_RESOURCES
    assert store_status(KeyError("bug")) == PROCESSING_FAILURE == 0x0110


def test_triage_outcomes_say_what_is_retried_and_why_a_study_was_not_triaged() -> None:
    """Passing failures are retried, bad data is not; not-eligible reasons are a fixed set."""
    assert triage_outcome(NotEligible("modality CT is not CR or DX")).retry is False
    assert triage_outcome(Overloaded("busy")).retry and triage_outcome(NotReady("x")).retry
    assert triage_outcome(Cancelled("stopping")).retry  # a shutdown keeps the study spooled
    assert triage_outcome(InvalidStudy("bad")).label == "invalid"
    assert triage_outcome(ValueError("bug")).label == "failed"
    assert triage_outcome(ValueError("bug")).retry  # acknowledged: kept, then quarantined
    assert not_eligible_reason("modality CT is not CR or DX") == "modality"
    assert not_eligible_reason("view LL is a lateral view") == "view"
    assert not_eligible_reason("body part 'TIBIA' is not CHEST") == "body_part"
    assert not_eligible_reason("something new") == "other"
