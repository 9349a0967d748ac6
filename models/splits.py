"""Patient-disjoint splits: classifier (train + validation), error model, calibration/test.

Every study of one patient lands in one part, so neither network sees a test patient and the
error model learns only from images the classifier never trained on. Studies from sites the
scenario marks as held out never enter the three parts: they form the ``heldout`` part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

PARTS = ("classifier_train", "classifier_val", "error_model", "test", "heldout")


@dataclass(frozen=True)
class SplitFractions:
    """Shares of patients per part; classifier_val is taken out of the classifier share."""

    classifier: float = 0.70
    error_model: float = 0.15
    test: float = 0.15
    classifier_val: float = 0.15  # share of the classifier patients used for validation

    def __post_init__(self) -> None:
        total = self.classifier + self.error_model + self.test
        if abs(total - 1.0) > 1e-9 or min(self.classifier, self.error_model, self.test) <= 0:
            raise ValueError(
                "split fractions must be positive and sum to 1 "
                f"(classifier={self.classifier}, error_model={self.error_model}, test={self.test})"
            )
        if not 0.0 < self.classifier_val < 1.0:
            raise ValueError(f"classifier_val must be in (0, 1), got {self.classifier_val}")

    @classmethod
    def parse(cls, text: str) -> SplitFractions:
        """Parse ``"70/15/15"`` (percent or fractions) into fractions."""
        parts = [float(p) for p in text.split("/")]
        if len(parts) != 3:
            raise ValueError(f"--split takes three numbers like 70/15/15, got {text!r}")
        total = sum(parts)
        return cls(parts[0] / total, parts[1] / total, parts[2] / total)


def _unit_hash(patient_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_patients(
    patient_ids: Sequence[str],
    heldout: Sequence[bool],
    fractions: SplitFractions,
    seed: int = 0,
) -> list[str]:
    """The part of each row; rows of one patient always share a part.

    A patient with any study at a held-out site goes wholly to ``heldout``. Other patients are
    placed by a seeded hash of their ID, so adding patients never moves existing ones.
    """
    if len(patient_ids) != len(heldout):
        raise ValueError("patient_ids and heldout differ in length")
    heldout_patients = {p for p, h in zip(patient_ids, heldout, strict=True) if h}
    part_of: dict[str, str] = {}
    cut_cls = fractions.classifier
    cut_err = cut_cls + fractions.error_model
    for pid in dict.fromkeys(patient_ids):
        if pid in heldout_patients:
            part_of[pid] = "heldout"
            continue
        u = _unit_hash(pid, seed)
        if u < cut_cls:
            inner = u / cut_cls
            part_of[pid] = (
                "classifier_val" if inner < fractions.classifier_val else "classifier_train"
            )
        elif u < cut_err:
            part_of[pid] = "error_model"
        else:
            part_of[pid] = "test"
    return [part_of[p] for p in patient_ids]
