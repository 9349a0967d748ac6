"""Timing of phantom rendering, alone and with writing (used by ``triage bench synth``)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from models.phantoms.generate import StudyJob, render_and_write, software_version
from models.phantoms.render import render_study
from models.phantoms.scenario import Scenario
from models.phantoms.study import plan_dataset


@dataclass(frozen=True)
class BenchResult:
    """Throughput of one stage."""

    stage: str
    studies: int
    images: int
    wall_s: float
    studies_per_s: float
    cpu_ms_per_study: float


def run_benchmark(scenario: Scenario, studies: int, size: int, seed: int = 0) -> list[BenchResult]:
    """Render ``studies`` studies (after one warm-up), then render and write them again."""
    specs = plan_dataset(scenario, seed, studies, size=size)
    images = sum(2 if s.lateral else 1 for s in specs)
    render_study(specs[0], size)  # warm caches (grids, fonts, texture bank)
    results = []
    wall, cpu = time.perf_counter(), time.process_time()
    for spec in specs:
        render_study(spec, size)
    results.append(_result("render only", studies, images, wall, cpu))
    with tempfile.TemporaryDirectory(prefix="phantom-bench-") as tmp:
        out = Path(tmp)
        version = software_version()
        wall, cpu = time.perf_counter(), time.process_time()
        for spec in specs:
            render_and_write(StudyJob(spec, size, out, version))
        results.append(_result("render + write (explicit VR, masks)", studies, images, wall, cpu))
    return results


def _result(stage: str, studies: int, images: int, wall0: float, cpu0: float) -> BenchResult:
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    return BenchResult(
        stage=stage,
        studies=studies,
        images=images,
        wall_s=wall,
        studies_per_s=studies / wall if wall > 0 else float("inf"),
        cpu_ms_per_study=1000.0 * cpu / studies,
    )
