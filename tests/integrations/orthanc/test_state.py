"""The sidecar's state folder: what a restart finds after each write."""

from __future__ import annotations

from pathlib import Path

import pytest

from integrations.orthanc.state import (
    DONE,
    PENDING,
    SavedObject,
    SavedResult,
    StateDir,
    StudyState,
)

STUDY = "2bd805fe-cfaf3433-b7045cec-4a6e2fac-4cad66f5"


def test_a_fresh_folder_has_no_sequence_and_a_set_one_survives_reopening(tmp_path: Path) -> None:
    """A first start sees no change sequence; one that was set is there after a restart."""
    assert StateDir(tmp_path).since() is None
    StateDir(tmp_path).set_since(41)
    assert StateDir(tmp_path).since() == 41


def test_a_queued_study_is_open_until_final_and_is_queued_only_once(tmp_path: Path) -> None:
    """enqueue is idempotent (a repeated StableStudy), and a final status closes the study."""
    state = StateDir(tmp_path)
    assert state.enqueue(STUDY) is True
    assert state.enqueue(STUDY) is False
    assert StateDir(tmp_path).open_studies() == {STUDY: StudyState(PENDING, 0, "")}
    state.put_study(STUDY, StudyState(DONE, 2, ""))
    assert StateDir(tmp_path).open_studies() == {}
    assert state.enqueue(STUDY) is False  # a study done stays done
    assert state.counts() == {DONE: 1}


def test_a_saved_result_reads_back_byte_for_byte_until_dropped(tmp_path: Path) -> None:
    """The objects saved before posting are the ones a restart posts (same bytes and UIDs)."""
    state = StateDir(tmp_path)
    objects = (SavedObject("SR", "1.2.3", b"sr-bytes"), SavedObject("SEG", "1.2.4", b"\x00seg"))
    state.save_result(STUDY, SavedResult({"decision": "DEFER"}, objects))
    again = StateDir(tmp_path).saved_result(STUDY)
    assert again == SavedResult({"decision": "DEFER"}, objects)
    state.drop_result(STUDY)
    assert state.saved_result(STUDY) is None


def test_a_result_folder_without_its_index_counts_as_no_result(tmp_path: Path) -> None:
    """Objects written without result.json (a kill mid-save) are ignored: the study is triaged
    again (the server replays its stored result), never posted half."""
    state = StateDir(tmp_path)
    (tmp_path / "results" / STUDY).mkdir(parents=True)
    (tmp_path / "results" / STUDY / "000-SR.dcm").write_bytes(b"partial")
    assert state.saved_result(STUDY) is None


def test_an_id_that_is_not_an_orthanc_id_is_refused(tmp_path: Path) -> None:
    """A resource id from the feed cannot name a path outside the state folder."""
    with pytest.raises(ValueError, match="Orthanc resource id"):
        StateDir(tmp_path).enqueue("../../etc/passwd")
