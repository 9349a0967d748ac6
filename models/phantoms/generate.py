"""Generate a phantom dataset: plan the studies, render and write them (in parallel), summarise.

Each study is rendered from its own seed streams, so the files do not depend on the number of
worker processes; results are collected in study order and ``labels.csv`` is written at the end.
"""

from __future__ import annotations

import importlib.metadata
import math
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.phantoms.dicom_writer import write_image
from models.phantoms.outputs import write_labels, write_masks
from models.phantoms.render import ANATOMY_MASKS, RenderedImage, render_study
from models.phantoms.scenario import Scenario
from models.phantoms.study import StudySpec, plan_dataset
from models.phantoms.summary import summarize
from triage_common.console import track, write_json
from triage_common.heap import retain_freed_memory
from triage_common.labels import DEFAULT_LABELS, severity_column, truth_column
from triage_common.logging import get_logger

log = get_logger(__name__)


def software_version() -> str:
    """The installed cxr-triage version (written into files and dataset.json)."""
    try:
        return importlib.metadata.version("cxr-triage")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class SynthConfig:
    """What ``triage synth`` was asked for."""

    out: Path
    studies: int
    seed: int
    scenario: Scenario
    scenario_source: str
    size: int = 512
    syntax: str = "explicit"
    workers: int = 1
    lateral_fraction: float | None = None


@dataclass(frozen=True)
class SynthResult:
    """What was written."""

    out: Path
    studies: int
    images: int
    patients: int
    summary: dict[str, Any]


@dataclass(frozen=True)
class StudyJob:
    """One study to render and write (what a worker process receives)."""

    spec: StudySpec
    size: int
    out: Path
    version: str


def image_path(spec: StudySpec, sop_uid: str) -> str:
    """Where an image goes, relative to the dataset folder."""
    return f"dicom/{spec.patient.patient_id}/{spec.study_uid}/{sop_uid}.dcm"


def _row(spec: StudySpec, image: RenderedImage, path: str) -> dict[str, object]:
    frontal = image.view != "LL"
    row: dict[str, object] = {
        "path": path,
        "patient_id": spec.patient.patient_id,
        "study_uid": spec.study_uid,
        "series_uid": spec.frontal_series_uid if frontal else spec.lateral_series_uid,
        "sop_uid": spec.frontal_sop_uid if frontal else spec.lateral_sop_uid,
        "site": spec.site.name,
        "view": image.view,
        "portable": int(spec.portable) if frontal else 0,
        "marker": spec.marker if frontal else "L",
        "sex": spec.patient.sex,
        "age": spec.age_years,
    }
    for label in DEFAULT_LABELS:
        row[label] = spec.reported[label]
        row[severity_column(label)] = f"{spec.severities[label]:.4f}"
        row[truth_column(label)] = spec.truth[label]
    return row


def anatomy_path(sop_uid: str) -> str:
    """Where a frontal image's anatomy and burned-in-text masks go, relative to the dataset."""
    return f"masks/anatomy/{sop_uid}.npz"


def render_and_write(job: StudyJob) -> list[dict[str, object]]:
    """Render one study, write its DICOM file(s) and masks; return its labels.csv rows."""
    spec = job.spec
    rendered = render_study(spec, job.size)
    rows = []
    for image, sop in (
        (rendered.frontal, spec.frontal_sop_uid),
        (rendered.lateral, spec.lateral_sop_uid),
    ):
        if image is None:
            continue
        path = image_path(spec, sop)
        write_image(job.out / path, spec, image, spec.syntax, job.version)
        rows.append(_row(spec, image, path))
    write_masks(job.out / "masks" / f"{spec.frontal_sop_uid}.npz", rendered.frontal.masks)
    if rendered.frontal.anatomy is not None:
        write_masks(job.out / anatomy_path(spec.frontal_sop_uid), rendered.frontal.anatomy)
    return rows


def _init_worker() -> None:
    retain_freed_memory()


def _results(jobs: list[StudyJob], workers: int) -> Iterator[list[dict[str, object]]]:
    if workers <= 1 or len(jobs) < 2:
        retain_freed_memory()
        yield from map(render_and_write, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes=workers, initializer=_init_worker) as pool:
        yield from pool.imap(
            render_and_write, jobs, chunksize=max(1, min(8, len(jobs) // (4 * workers)))
        )


def _json_safe(value: Any) -> Any:
    """NaN (an undefined ratio) becomes null, so dataset.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def synthesize(config: SynthConfig) -> SynthResult:
    """Render and write a whole dataset into ``config.out``."""
    specs = plan_dataset(
        config.scenario,
        config.seed,
        config.studies,
        syntax=config.syntax,
        lateral_fraction=config.lateral_fraction,
        size=config.size,
    )
    config.out.mkdir(parents=True, exist_ok=True)
    version = software_version()
    jobs = [StudyJob(spec, config.size, config.out, version) for spec in specs]
    log.info(
        "synth_start",
        studies=len(specs),
        size=config.size,
        scenario=config.scenario.name,
        syntax=config.syntax,
        workers=config.workers,
    )
    rows: list[dict[str, object]] = []
    for study_rows in track(_results(jobs, config.workers), len(jobs), "rendering studies"):
        rows.extend(study_rows)
    write_labels(config.out / "labels.csv", rows)
    summary = summarize(specs, [site.name for site in config.scenario.sites])
    patients = len({s.patient.patient_id for s in specs})
    lateral = sum(1 for s in specs if s.lateral)
    write_json(
        config.out / "dataset.json",
        {
            "scenario": config.scenario.to_dict(),
            "scenario_source": config.scenario_source,
            "seed": config.seed,
            "size": config.size,
            "syntax": config.syntax,
            "lateral_fraction": (
                config.scenario.lateral_fraction
                if config.lateral_fraction is None
                else config.lateral_fraction
            ),
            "labels": list(DEFAULT_LABELS),
            "anatomy_masks": {"path": anatomy_path("<sop_uid>"), "keys": list(ANATOMY_MASKS)},
            "counts": {
                "patients": patients,
                "studies": len(specs),
                "images": len(rows),
                "frontal": len(specs),
                "lateral": lateral,
            },
            "software": {"name": "cxr-triage", "version": version},
            "summary": _json_safe(summary),
        },
    )
    log.info("synth_done", studies=len(specs), images=len(rows), patients=patients)
    return SynthResult(
        out=config.out, studies=len(specs), images=len(rows), patients=patients, summary=summary
    )
