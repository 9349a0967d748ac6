"""The spool: durable files under hashed names, its bounds, and what a restart finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.dicom.spool import Spool, StudyMeta, key_of
from service.dicom.status import SpoolFull


def _spool(root: Path, **bounds: int) -> Spool:
    limits = {"max_study_bytes": 100, "max_study_instances": 3, "max_total_bytes": 250, **bounds}
    return Spool(root, **limits)


def test_instances_are_kept_under_hashed_names_and_survive_a_restart(tmp_path: Path) -> None:
    """No UID appears in a path; a new spool on the folder finds the studies, their sender and
    sizes, and drops half-written files and folders without an instance."""
    spool = _spool(tmp_path)
    key = spool.add("1.2.3", "1.2.3.4", b"x" * 40, StudyMeta("CR1", "10.0.0.5"))
    spool.add("1.2.3", "1.2.3.5", b"y" * 30, StudyMeta("CR1", "10.0.0.5"))
    assert key == key_of("1.2.3")
    assert all("1.2.3" not in str(p) for p in tmp_path.rglob("*"))
    (tmp_path / "studies" / key / "half.dcm.part").write_bytes(b"z")
    (tmp_path / "studies" / "empty").mkdir()
    again = _spool(tmp_path)
    (study,) = again.studies()
    assert study.key == key and study.meta == StudyMeta("CR1", "10.0.0.5")
    assert again.total_bytes == 70 and len(again.instances(key)) == 2
    assert not (tmp_path / "studies" / key / "half.dcm.part").exists()
    assert not (tmp_path / "studies" / "empty").exists()


def test_bounds_refuse_an_instance_before_it_is_written(tmp_path: Path) -> None:
    """Past the study's bytes or instance count, or the spool's total: SpoolFull naming the key;
    the same instance again replaces itself; removal frees the room."""
    spool = _spool(tmp_path)
    spool.add("s1", "i1", b"a" * 60, StudyMeta())
    with pytest.raises(SpoolFull, match=r"dicom\.max_study_bytes"):
        spool.add("s1", "i2", b"b" * 50, StudyMeta())
    spool.add("s1", "i1", b"a" * 90, StudyMeta())  # a resend of i1 replaces it
    assert spool.total_bytes == 90
    for n in range(2):
        spool.add("s2", f"j{n}", b"c", StudyMeta())
    spool.add("s2", "j2", b"c", StudyMeta())
    with pytest.raises(SpoolFull, match=r"dicom\.max_study_instances"):
        spool.add("s2", "j3", b"c", StudyMeta())
    spool.add("s3", "k1", b"d" * 100, StudyMeta())
    with pytest.raises(SpoolFull, match=r"dicom\.max_spool_bytes"):
        spool.add("s4", "l1", b"e" * 80, StudyMeta())
    assert spool.remove(key_of("s3"), spool.instances(key_of("s3")))
    spool.add("s4", "l1", b"e" * 80, StudyMeta())
    assert spool.study_count == 3
    assert not list((tmp_path / "studies").glob("**/*.part"))
