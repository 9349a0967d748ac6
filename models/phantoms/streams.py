"""Independent random streams, derived from (seed, namespace, index, purpose) by SeedSequence.

Every random decision about a study comes from a stream of its own, so a study renders the same
in any process and order, and switching one finding on or off leaves the anatomy, the noise and
the other findings untouched.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from triage_common.labels import DEFAULT_LABELS

PLAN: Final = 0
PATIENT: Final = 1
STUDY: Final = 2

LATENT: Final = 0
SEVERITY: Final = 1
ACQUISITION: Final = 2
ANATOMY: Final = 3
TEXTURE: Final = 4
NOISE: Final = 5
LABEL_NOISE: Final = 6
IDENTITY: Final = 7
LATERAL: Final = 8
LATERAL_NOISE: Final = 9
_FINDING_BASE: Final = 16


def plan_rng(seed: int) -> np.random.Generator:
    """The stream that lays out patients (sites, studies per patient)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(PLAN,)))


def patient_rng(seed: int, patient: int) -> np.random.Generator:
    """The stream of one patient (identity, build, disease tendency)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(PATIENT, patient)))


def study_rng(seed: int, study: int, purpose: int) -> np.random.Generator:
    """One purpose's stream for one study (``purpose`` is one of this module's constants)."""
    return np.random.default_rng(
        np.random.SeedSequence(entropy=seed, spawn_key=(STUDY, study, purpose))
    )


def finding_rng(seed: int, study: int, label: str) -> np.random.Generator:
    """The stream that shapes one finding (side, texture, lines) in one study."""
    return study_rng(seed, study, _FINDING_BASE + DEFAULT_LABELS.index(label))
