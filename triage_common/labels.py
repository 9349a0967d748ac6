"""The finding labels the project knows, in the canonical (CheXpert) spelling and order."""

from __future__ import annotations

from typing import Final

CARDIOMEGALY: Final = "Cardiomegaly"
EDEMA: Final = "Edema"
PLEURAL_EFFUSION: Final = "Pleural Effusion"
PNEUMOTHORAX: Final = "Pneumothorax"

#: Default label order for the phantom benchmark and the demo bundle.
DEFAULT_LABELS: Final[tuple[str, ...]] = (CARDIOMEGALY, EDEMA, PLEURAL_EFFUSION, PNEUMOTHORAX)


def severity_column(label: str) -> str:
    """Name of the severity column for ``label`` in a phantom ``labels.csv``."""
    return f"{label}_severity"


def truth_column(label: str) -> str:
    """Name of the noise-free ground-truth column for ``label`` in a phantom ``labels.csv``."""
    return f"{label}_true"


def file_stem(label: str) -> str:
    """A finding's name as a file stem: ``"Pleural Effusion"`` -> ``"pleural_effusion"``."""
    return label.replace(" ", "_").lower()
