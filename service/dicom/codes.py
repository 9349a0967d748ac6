"""The coded concepts of the result objects: one data table for the findings, fixed codes else.

- Findings: ``finding_codes.json`` (shipped beside this module) maps each bundle label to its
  SNOMED CT concept; :func:`finding_code` looks a label up and :func:`check_labels` refuses a
  bundle with a label the table lacks (start-up, when DICOM results are on), so no code is ever
  made up for a finding.
- Standard concepts: Present / Absent (SNOMED CT, CID 240), DCM 122157 "Probability",
  DCM 122411 "Threshold Value", the procedure (SNOMED CT "Plain chest X-ray"), the algorithm
  family (DCM "Artificial Intelligence") and the segment category (SNOMED CT "Morphologically
  Abnormal Structure").
- The triage decision has no standard code (deferral to a reader, the error model's P(error),
  the defer cost, the reading priority). Those concepts are local codes of the private coding
  scheme :data:`LOCAL_SCHEME` (a designator starting with ``99``, as PS3.3 8.2 reserves for
  local schemes), declared in every object that uses them by
  :func:`coding_scheme_identification`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

TABLE = Path(__file__).with_name("finding_codes.json")

#: The private coding scheme of the decision concepts.
LOCAL_SCHEME = "99CXRT"
LOCAL_SCHEME_NAME = "cxr-triage local codes"

PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
PROBABILITY = Code("122157", "DCM", "Probability")
THRESHOLD = Code("122411", "DCM", "Threshold Value")
NO_UNITS = Code("1", "UCUM", "no units")
PROCEDURE = Code("399208008", "SCT", "Plain chest X-ray")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
KEY_OBJECTS_OF_INTEREST = Code("113000", "DCM", "Of Interest")


def _local(value: str, meaning: str) -> Code:
    return Code(value, LOCAL_SCHEME, meaning)


TRIAGE_DECISION = _local("DECISION", "Triage decision")
DECISIONS = {
    "AUTO_REPORT": _local("AUTO_REPORT", "Auto-reported without a radiologist read"),
    "DEFER": _local("DEFER", "Deferred to a radiologist"),
}
DEFER_REASON = _local("DEFER_REASON", "Reason for deferral")
REASONS = {
    "P_ERROR_ABOVE_COST": _local("P_ERROR_ABOVE_COST", "Probability of error above defer cost"),
    "OUT_OF_DISTRIBUTION": _local("OUT_OF_DISTRIBUTION", "Image out of distribution"),
}
P_ERROR = _local("P_ERROR", "Probability that the classifier is wrong")
DEFER_COST = _local("DEFER_COST", "Defer cost applied")
PRIORITY = _local("PRIORITY", "Reading priority")
PRIORITIES = {
    "ROUTINE": _local("ROUTINE", "Routine"),
    "URGENT": _local("URGENT", "Urgent"),
    "STAT": _local("STAT", "Stat"),
}
#: The tracking identifier of the decision's measurement group.
DECISION_GROUP = "triage decision"


@dataclass(frozen=True)
class FindingCode:
    """One row of the table: a label and its concept."""

    label: str
    code: Code


@cache
def finding_table() -> dict[str, FindingCode]:
    """The shipped table, label -> :class:`FindingCode`."""
    data = json.loads(TABLE.read_text())
    scheme = data["scheme"]
    return {
        label: FindingCode(label, Code(row["value"], scheme, row["meaning"]))
        for label, row in data["labels"].items()
    }


def finding_code(label: str) -> Code:
    """The concept of ``label``; KeyError naming the table when it has none."""
    try:
        return finding_table()[label].code
    except KeyError:
        raise KeyError(f"finding {label!r} has no code in {TABLE.name}") from None


def label_of(code_value: str, scheme: str) -> str | None:
    """The label coded ``(code_value, scheme)``, or None."""
    for row in finding_table().values():
        if (row.code.value, row.code.scheme_designator) == (code_value, scheme):
            return row.label
    return None


def check_labels(labels: Iterable[str]) -> list[str]:
    """The labels the table lacks (empty: every label has its code)."""
    table = finding_table()
    return [label for label in labels if label not in table]


@cache
def modality_code(modality: str) -> Code | None:
    """The DCM concept of a Modality value (CID 29: ``CR`` "Computed Radiography"), or None."""
    from pydicom.sr._concepts_dict import concepts

    table: Any = concepts["DCM"]
    for entry in table.values():
        meaning = entry.get(modality)
        if meaning is not None and modality:
            return Code(modality, "DCM", meaning[0])
    return None


def coding_scheme_identification() -> Dataset:
    """The Coding Scheme Identification item declaring :data:`LOCAL_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "cxr-triage"
    return item
