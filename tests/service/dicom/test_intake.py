"""The intake: an acknowledged study is kept until it is triaged, retried or quarantined."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.config import DicomConfig
from service.core.errors import NotEligible
from service.dicom.intake import Intake
from service.dicom.metrics import DicomMetrics
from service.dicom.spool import QUARANTINE, Spool, StudyMeta, key_of


class _Broken:
    """A pipeline whose every run raises ``error`` (counting the runs)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.runs = 0

    def run(self, *args: object, **kwargs: object) -> object:
        self.runs += 1
        raise self.error


def _intake(tmp_path: Path, pipeline: _Broken, registry: CollectorRegistry) -> Intake:
    config = DicomConfig(
        port=1, spool_dir=str(tmp_path), quiet_seconds=0.0, retry_seconds=0.05,
        max_failed_attempts=3,
    )  # fmt: skip
    spool = Spool(tmp_path, max_study_bytes=10_000, max_study_instances=5, max_total_bytes=10_000)
    return Intake(
        config, spool, lambda: pipeline,  # type: ignore[arg-type,return-value]
        None, None, DicomMetrics(registry, True), request_seconds=5.0,
    )  # fmt: skip


def _count(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value("triage_dicom_studies_total", {"outcome": outcome})
    return value or 0.0


def test_an_unexpected_failure_is_retried_then_quarantined_never_deleted(tmp_path: Path) -> None:
    """A study whose triage raises a bug is tried max_failed_attempts times, then its files move
    to quarantine/ with the instance intact, and the failure is counted."""
    registry = CollectorRegistry()
    pipeline = _Broken(RuntimeError("a bug"))
    intake = _intake(tmp_path, pipeline, registry)
    intake.accept("1.2.3", "1.2.3.4", b"instance bytes", 1, StudyMeta("CR1", "127.0.0.1"))
    intake.released(1)
    intake.start()
    try:
        assert intake.wait_idle(10.0)
    finally:
        intake.stop(5.0)
    assert pipeline.runs == 3
    kept = tmp_path / QUARANTINE / key_of("1.2.3") / (key_of("1.2.3.4") + ".dcm")
    assert kept.read_bytes() == b"instance bytes"
    assert not list((tmp_path / "studies").iterdir())
    assert _count(registry, "failed") == 3 and _count(registry, "quarantined") == 1


def test_a_study_that_is_not_eligible_is_done_with_at_once(tmp_path: Path) -> None:
    """A lateral or a CT is stored, counted with its reason, tried once and removed."""
    registry = CollectorRegistry()
    pipeline = _Broken(NotEligible("view LL is a lateral view"))
    intake = _intake(tmp_path, pipeline, registry)
    intake.accept("1.2.3", "1.2.3.4", b"instance bytes", 1, StudyMeta())
    intake.released(1)
    intake.start()
    try:
        assert intake.wait_idle(10.0)
        time.sleep(0.2)  # a retry would have run by now
    finally:
        intake.stop(5.0)
    assert pipeline.runs == 1
    assert not (tmp_path / QUARANTINE).exists()
    assert _count(registry, "not_eligible") == 1
    assert registry.get_sample_value("triage_dicom_not_eligible_total", {"reason": "view"}) == 1
