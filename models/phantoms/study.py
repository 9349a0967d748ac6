"""Patients and studies: who is imaged where, which findings they have, how the film was taken.

``plan_dataset`` is cheap and deterministic: it returns one ``StudySpec`` per study, holding
everything needed to render and write it (so a study can be rendered again on its own, e.g. with
one finding switched off by ``dataclasses.replace``). Findings come from a Gaussian copula: a
latent normal vector per study (part shared by the patient's studies) with the scenario's
correlations, thresholded at the site's prevalences. Whether a film is portable depends on the
true findings, with the site's P(portable | finding) and P(portable | no finding).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final

import numpy as np
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from models.phantoms import streams
from models.phantoms.anatomy import Anatomy, Body, sample_anatomy, sample_body
from models.phantoms.geometry import F64
from models.phantoms.scenario import Scenario, Site
from triage_common.labels import DEFAULT_LABELS

SYNTAXES: Final = ("explicit", "rle", "j2k")
UID_ROOT: Final = PYDICOM_ROOT_UID

_FAMILY = (
    "ABERNATHY", "BALDWIN", "CASTILLO", "DEMIR", "EKWUEME", "FISCHER", "GALLAGHER", "HASHIMOTO",
    "IVANOVA", "JENSEN", "KOWALSKI", "LINDQVIST", "MORENO", "NAKAMURA", "OKAFOR", "PETERSEN",
    "QUINTERO", "ROSSI", "SANTOS", "TANAKA", "UDOH", "VARGAS", "WALLACE", "XU", "YILDIZ", "ZHANG",
)  # fmt: skip
_GIVEN = {
    "F": ("ADA", "BEATRIZ", "CHIARA", "DANA", "ELIF", "FATIMA", "GRETA", "HANA", "INES", "JUNE"),
    "M": ("AARON", "BRUNO", "CARLOS", "DEREK", "EMEKA", "FELIX", "GORAN", "HIRO", "IVAN", "JONAS"),
}


@dataclass(frozen=True)
class Exposure:
    """How one image was acquired and processed (display gain, site look, borders, text jitter)."""

    gain: float
    gamma: float
    contrast: float
    brightness: float
    noise: float
    blur: float
    heel: float
    collimation: tuple[float, float, float, float] | None
    collimation_level: float
    portable_offset: tuple[float, float]
    marker_offset: tuple[float, float]


@dataclass(frozen=True)
class PatientSpec:
    """One synthetic patient (all identifiers are synthetic and derived from the seed)."""

    index: int
    patient_id: str
    name: str
    birth_date: str
    sex: str
    site: str
    n_studies: int
    first_day: int
    gaps: tuple[int, ...]
    latent: tuple[float, ...]
    body: Body


@dataclass(frozen=True)
class StudySpec:
    """Everything needed to render and write one study (a frontal and maybe a lateral image)."""

    seed: int
    index: int
    visit: int
    patient: PatientSpec
    site: Site
    view: str
    portable: bool
    marker: str
    lateral: bool
    severities: dict[str, float]
    reported: dict[str, int]
    anatomy: Anatomy
    exposure: Exposure
    lateral_exposure: Exposure
    syntax: str
    study_date: str
    study_time: str
    accession: str
    study_uid: str
    frontal_series_uid: str
    frontal_sop_uid: str
    lateral_series_uid: str
    lateral_sop_uid: str
    pixel_spacing_mm: float

    @property
    def truth(self) -> dict[str, int]:
        """Noise-free presence of each finding."""
        return {k: int(v > 0.0) for k, v in self.severities.items()}

    @property
    def any_finding(self) -> bool:
        return any(v > 0.0 for v in self.severities.values())

    @property
    def age_years(self) -> int:
        """The patient's age in whole years on the study date (what PatientAge holds)."""
        return age_years(self.patient.birth_date, self.study_date)


def age_years(birth: str, on: str) -> int:
    """Whole years between two DICOM dates (``YYYYMMDD``), never below 0."""
    b = dt.datetime.strptime(birth, "%Y%m%d").date()
    d = dt.datetime.strptime(on, "%Y%m%d").date()
    return max(d.year - b.year - ((d.month, d.day) < (b.month, b.day)), 0)


def _cholesky(matrix: list[list[float]]) -> F64:
    return _cholesky_of(tuple(tuple(row) for row in matrix))


@functools.lru_cache(maxsize=8)
def _cholesky_of(matrix: tuple[tuple[float, ...], ...]) -> F64:
    low: F64 = np.linalg.cholesky(np.asarray(matrix, dtype=np.float64))
    low.setflags(write=False)
    return low


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID under pydicom's root, from the seed and what the UID names."""
    return str(
        generate_uid(prefix=UID_ROOT, entropy_srcs=[str(p) for p in ("phantom", seed, *parts)])
    )


def _seed_tag(seed: int) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()[:3].upper()


def plan_patients(scenario: Scenario, seed: int, n_studies: int) -> list[PatientSpec]:
    """Enough patients to hold ``n_studies`` studies (the last one may get fewer than drawn)."""
    plan = streams.plan_rng(seed)
    weights = np.array([s.weight for s in scenario.sites], dtype=np.float64)
    weights /= weights.sum()
    counts = sorted(scenario.studies_per_patient.items(), key=lambda kv: int(kv[0]))
    count_values = np.array([int(k) for k, _ in counts])
    count_p = np.array([v for _, v in counts], dtype=np.float64)
    count_p /= count_p.sum()
    chol = _cholesky(scenario.correlation_matrix())
    base = dt.date(2016, 1, 1).toordinal()
    patients: list[PatientSpec] = []
    total = 0
    while total < n_studies:
        p = len(patients)
        site = scenario.sites[int(plan.choice(len(scenario.sites), p=weights))]
        n = min(int(plan.choice(count_values, p=count_p)), n_studies - total)
        rng = streams.patient_rng(seed, p)
        sex = "F" if rng.random() < 0.5 else "M"
        given = _GIVEN[sex][int(rng.integers(len(_GIVEN[sex])))]
        family = _FAMILY[int(rng.integers(len(_FAMILY)))]
        initial = chr(ord("A") + int(rng.integers(26)))
        first_day = base + int(rng.integers(0, 6 * 365))
        age_days = int(rng.uniform(22, 92) * 365.25)
        birth = dt.date.fromordinal(first_day - age_days).strftime("%Y%m%d")
        gaps = tuple(int(g) for g in rng.integers(1, 420, size=max(n, 1)))
        latent = chol @ rng.standard_normal(len(DEFAULT_LABELS))
        body = sample_body(rng, sex)
        patients.append(
            PatientSpec(
                index=p,
                patient_id=f"PX{_seed_tag(seed)}{p:06d}",
                name=f"{family}^{given}^{initial}",
                birth_date=birth,
                sex=sex,
                site=site.name,
                n_studies=n,
                first_day=first_day,
                gaps=gaps,
                latent=tuple(float(v) for v in latent),
                body=body,
            )
        )
        total += n
    return patients


def _exposure(site: Site, rng: np.random.Generator) -> Exposure:
    acq = site.acquisition
    draws = rng.random(12)
    if draws[0] < acq.collimation_probability:
        lo, hi = acq.collimation_margin
        margins = tuple(float(lo + (hi - lo) * d) for d in draws[1:5])
        collimation: tuple[float, float, float, float] | None = (
            margins[0],
            margins[1],
            margins[2],
            margins[3],
        )
    else:
        collimation = None
    jitter = [(d - 0.5) * 0.016 for d in draws[5:9]]
    return Exposure(
        gain=1.6 * math.exp(acq.exposure_jitter * NormalDist().inv_cdf(0.02 + 0.96 * draws[9])),
        gamma=acq.gamma,
        contrast=acq.contrast,
        brightness=acq.brightness,
        noise=acq.noise * (0.8 + 0.4 * draws[10]),
        blur=acq.blur,
        heel=acq.heel * (1.0 if draws[11] < 0.5 else -1.0),
        collimation=collimation,
        collimation_level=0.88 + 0.08 * draws[1],
        portable_offset=(jitter[0], jitter[1]),
        marker_offset=(jitter[2], jitter[3]),
    )


def sample_study(
    scenario: Scenario,
    seed: int,
    index: int,
    patient: PatientSpec,
    visit: int,
    syntax: str,
    lateral_fraction: float,
    size: int,
) -> StudySpec:
    """Draw one study of ``patient`` (its ``visit``-th)."""
    site = scenario.site(patient.site)
    rho = scenario.patient_correlation
    chol = _cholesky(scenario.correlation_matrix())
    own = chol @ streams.study_rng(seed, index, streams.LATENT).standard_normal(len(DEFAULT_LABELS))
    latent = math.sqrt(rho) * np.asarray(patient.latent) + math.sqrt(1.0 - rho) * own
    sev_rng = streams.study_rng(seed, index, streams.SEVERITY)
    noise_rng = streams.study_rng(seed, index, streams.LABEL_NOISE)
    reader_draws = noise_rng.random(len(DEFAULT_LABELS))
    severities: dict[str, float] = {}
    reported: dict[str, int] = {}
    ln = scenario.label_noise
    for k, label in enumerate(DEFAULT_LABELS):
        prior = scenario.severity[label]
        draw = float(sev_rng.beta(prior.alpha, prior.beta))
        threshold = (
            NormalDist().inv_cdf(1.0 - site.prevalence[label])
            if site.prevalence[label] > 0
            else math.inf
        )
        present = bool(latent[k] > threshold)
        sev = min(max(draw, prior.minimum), 1.0) if present else 0.0
        severities[label] = round(sev, 4)
        if present:
            miss = ln.miss_at_zero * math.exp(-severities[label] / ln.severity_scale)
            reported[label] = int(reader_draws[k] >= miss)
        else:
            reported[label] = int(reader_draws[k] < ln.false_positive)
    any_finding = any(v > 0 for v in severities.values())
    acq = streams.study_rng(seed, index, streams.ACQUISITION)
    u_portable, u_view, u_marker, u_lateral = acq.random(4)
    p_portable = site.portable.given_finding if any_finding else site.portable.given_no_finding
    portable = bool(u_portable < p_portable)
    view = "AP" if portable or u_view < site.ap_fraction_nonportable else "PA"
    marker = "L" if u_marker < site.marker_left_probability else "R"
    lateral = (not portable) and bool(u_lateral < lateral_fraction)
    exposure = _exposure(site, acq)
    lateral_exposure = _exposure(site, streams.study_rng(seed, index, streams.LATERAL))
    anatomy = sample_anatomy(patient.body, view, streams.study_rng(seed, index, streams.ANATOMY))
    ident = streams.study_rng(seed, index, streams.IDENTITY)
    day = patient.first_day + sum(patient.gaps[:visit])
    seconds = int(ident.integers(6 * 3600, 23 * 3600))
    accession = f"A{_seed_tag(seed)}{int(ident.integers(0, 10**7)):07d}{index % 100:02d}"
    return StudySpec(
        seed=seed,
        index=index,
        visit=visit,
        patient=patient,
        site=site,
        view=view,
        portable=portable,
        marker=marker,
        lateral=lateral,
        severities=severities,
        reported=reported,
        anatomy=anatomy,
        exposure=exposure,
        lateral_exposure=lateral_exposure,
        syntax=syntax if syntax != "mixed" else SYNTAXES[(seed + index) % len(SYNTAXES)],
        study_date=dt.date.fromordinal(day).strftime("%Y%m%d"),
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        accession=accession,
        study_uid=_uid(seed, "study", index),
        frontal_series_uid=_uid(seed, "series", index, "frontal"),
        frontal_sop_uid=_uid(seed, "sop", index, "frontal"),
        lateral_series_uid=_uid(seed, "series", index, "lateral"),
        lateral_sop_uid=_uid(seed, "sop", index, "lateral"),
        pixel_spacing_mm=round(scenario.field_of_view_mm / size, 6),
    )


def plan_dataset(
    scenario: Scenario,
    seed: int,
    n_studies: int,
    *,
    syntax: str = "explicit",
    lateral_fraction: float | None = None,
    size: int = 512,
) -> list[StudySpec]:
    """All studies of a dataset, in order (patients' studies are consecutive)."""
    fraction = scenario.lateral_fraction if lateral_fraction is None else lateral_fraction
    specs: list[StudySpec] = []
    for patient in plan_patients(scenario, seed, n_studies):
        for visit in range(patient.n_studies):
            specs.append(
                sample_study(scenario, seed, len(specs), patient, visit, syntax, fraction, size)
            )
    return specs
