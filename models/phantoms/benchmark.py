"""Timing of phantom rendering, alone and with writing (used by ``triage bench synth``)."""

from __future__ import annotations

import functools
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.phantoms.generate import StudyJob, render_and_write, software_version
from models.phantoms.render import render_study
from models.phantoms.scenario import Scenario
from models.phantoms.study import StudySpec, plan_dataset
from triage_common.heap import retain_freed_memory


@dataclass(frozen=True)
class BenchResult:
    """Throughput of one stage: the median of ``rounds`` timed rounds over the same studies."""

    stage: str
    studies: int
    images: int
    rounds: int
    wall_s: float
    studies_per_s: float
    slowest_per_s: float
    cpu_ms_per_study: float
    page_faults_per_study: float


@dataclass(frozen=True)
class _Round:
    wall: float
    cpu: float
    faults: int


def run_benchmark(
    scenario: Scenario, studies: int, size: int, seed: int = 0, rounds: int = 3
) -> list[BenchResult]:
    """Render ``studies`` studies, then render and write them, each ``rounds`` times.

    The process is set up as ``triage synth`` sets up its workers (freed memory kept), and one
    study is rendered first to warm the caches (grids, fonts, the texture bank). Machines
    shared with other work vary by 10-30 % between rounds, so each stage reports its median
    round and, beside it, its slowest.
    """
    retain_freed_memory()
    specs = plan_dataset(scenario, seed, studies, size=size)
    images = sum(2 if s.lateral else 1 for s in specs)
    render_study(specs[0], size)
    rendered = [_timed(functools.partial(_render, specs, size)) for _ in range(rounds)]
    version = software_version()
    written = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="phantom-bench-") as tmp:
            written.append(_timed(functools.partial(_write, specs, size, Path(tmp), version)))
    return [
        _result("render only", specs, images, rendered),
        _result("render + write (explicit VR, masks)", specs, images, written),
    ]


def _render(specs: list[StudySpec], size: int) -> None:
    for spec in specs:
        render_study(spec, size)


def _write(specs: list[StudySpec], size: int, out: Path, version: str) -> None:
    for spec in specs:
        render_and_write(StudyJob(spec, size, out, version))


def _timed(work: Callable[[], None]) -> _Round:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return _Round(
        wall=time.perf_counter() - wall,
        cpu=time.process_time() - cpu,
        faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
    )


def _result(stage: str, specs: list[StudySpec], images: int, rounds: list[_Round]) -> BenchResult:
    n = len(specs)
    median = sorted(rounds, key=lambda r: r.wall)[len(rounds) // 2]
    slowest = max(r.wall for r in rounds)
    return BenchResult(
        stage=stage,
        studies=n,
        images=images,
        rounds=len(rounds),
        wall_s=median.wall,
        studies_per_s=n / median.wall if median.wall > 0 else float("inf"),
        slowest_per_s=n / slowest if slowest > 0 else float("inf"),
        cpu_ms_per_study=1000.0 * statistics.median(r.cpu for r in rounds) / n,
        page_faults_per_study=statistics.median(r.faults for r in rounds) / n,
    )
