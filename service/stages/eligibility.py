"""Eligibility stage: which image of the study is read, and why the others are ignored.

An instance is eligible when, from its header alone:

1. it carries pixel data;
2. its Modality is one of ``eligibility.modalities`` (CR, DX);
3. its BodyPartExamined is one of ``eligibility.body_parts`` (CHEST), or missing when
   ``eligibility.allow_missing_body_part`` is on (the result notes it and the log records it);
4. it is a single-sample grayscale image (MONOCHROME1 or MONOCHROME2);
5. its ViewPosition is a frontal view (``eligibility.frontal_views``: PA, AP), or missing when
   ``eligibility.allow_missing_view`` is on. Laterals (LL, RL, LAT...) and other views are
   ignored and reported in ``ignored_instances``.

Selection rule when several frontal images are eligible (first difference decides):

1. the view listed earlier in ``eligibility.frontal_views`` (by default PA before AP), and any
   listed view before an image without ViewPosition;
2. the larger image (Rows x Columns);
3. the lower InstanceNumber (an image without one comes after those with one);
4. the earlier position in the request.

No eligible image: when no instance carries pixel data at all the study is INVALID_ARGUMENT
("the DICOM file has no pixel data"); otherwise FAILED_PRECONDITION naming each distinct
reason (e.g. "modality CT is not CR or DX"). All instances must share one StudyInstanceUID
(else INVALID_ARGUMENT; the message carries only hashed UIDs).
"""

from __future__ import annotations

from collections.abc import Sequence

from service.config import EligibilityConfig
from service.core.errors import InvalidStudy, NotEligible
from service.core.types import Ignored, InstanceHeader, Selection
from service.stages.defined_terms import quoted
from triage_common.logging import hash_uid

#: ViewPosition values that are lateral projections.
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
NO_PIXEL_DATA = "no pixel data"


def _join(values: Sequence[str]) -> str:
    if len(values) == 1:
        return values[0]
    return ", ".join(values[:-1]) + " or " + values[-1]


def study_uid(headers: Sequence[InstanceHeader]) -> str:
    """The one StudyInstanceUID of ``headers``; INVALID_ARGUMENT when missing or mixed."""
    uids = {h.study_instance_uid for h in headers}
    if "" in uids:
        missing = next(h.index for h in headers if not h.study_instance_uid)
        raise InvalidStudy(f"instance {missing} has no StudyInstanceUID")
    if len(uids) != 1:
        hashed = ", ".join(sorted(hash_uid(u) for u in uids))
        raise InvalidStudy(
            f"the instances belong to {len(uids)} different studies (hashed StudyInstanceUIDs: "
            f"{hashed}); send one study per call"
        )
    return uids.pop()


def ineligible_reason(header: InstanceHeader, rules: EligibilityConfig) -> str | None:
    """Why ``header`` cannot be read (None: it is an eligible frontal image)."""
    if not header.has_pixel_data:
        return NO_PIXEL_DATA
    if header.modality not in rules.modalities:
        shown = (
            quoted("Modality", header.modality, rules.modalities) if header.modality else "missing"
        )
        return f"modality {shown} is not {_join(rules.modalities)}"
    if header.body_part and header.body_part not in rules.body_parts:
        shown = quoted("BodyPartExamined", header.body_part, rules.body_parts)
        return f"body part {shown} is not {_join(rules.body_parts)}"
    if not header.body_part and not rules.allow_missing_body_part:
        return "BodyPartExamined is missing"
    if header.photometric not in GRAYSCALE or header.samples_per_pixel != 1:
        shown = (
            quoted("PhotometricInterpretation", header.photometric)
            if header.photometric
            else "missing"
        )
        return f"PhotometricInterpretation {shown} is not grayscale"
    view = header.view_position
    if view in LATERAL_VIEWS:
        return f"lateral view ({quoted('ViewPosition', view)})"
    if view and view not in rules.frontal_views:
        shown = quoted("ViewPosition", view, rules.frontal_views)
        return f"view position {shown} is not frontal ({_join(rules.frontal_views)})"
    if not view and not rules.allow_missing_view:
        return "ViewPosition is missing"
    return None


def _rank(header: InstanceHeader, rules: EligibilityConfig) -> tuple[int, int, int, int]:
    views = list(rules.frontal_views)
    view_rank = views.index(header.view_position) if header.view_position in views else len(views)
    number = header.instance_number if header.instance_number is not None else 2**63
    return (view_rank, -(header.rows * header.columns), number, header.index)


def select_frontal(headers: Sequence[InstanceHeader], rules: EligibilityConfig) -> Selection:
    """Apply the eligibility rules and the selection rule of the module docstring."""
    eligible: list[InstanceHeader] = []
    ignored: list[Ignored] = []
    for header in headers:
        reason = ineligible_reason(header, rules)
        if reason is None:
            eligible.append(header)
        else:
            ignored.append(Ignored(header.index, header.sop_instance_uid, reason))
    if not eligible:
        reasons = list(dict.fromkeys(i.reason for i in ignored))
        if reasons == [NO_PIXEL_DATA]:
            raise InvalidStudy("the DICOM file has no pixel data")
        raise NotEligible("no frontal chest radiograph in the study: " + "; ".join(reasons))
    eligible.sort(key=lambda h: _rank(h, rules))
    chosen = eligible[0]
    for other in eligible[1:]:
        ignored.append(Ignored(other.index, other.sop_instance_uid, "not the chosen frontal image"))
    notes = []
    if not chosen.body_part:
        notes.append("BodyPartExamined missing (allowed)")
    if not chosen.view_position:
        notes.append("ViewPosition missing (treated as frontal)")
    ignored.sort(key=lambda i: i.index)
    return Selection(chosen, tuple(ignored), tuple(notes))
