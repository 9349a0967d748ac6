"""Atomic writes: the file appears whole or not at all, and both it and its folder are fsynced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from triage_common.atomic import atomic_path, atomic_write_bytes, atomic_write_text


def test_bytes_and_text_appear_with_their_content(tmp_path: Path) -> None:
    """atomic_write_bytes and atomic_write_text leave exactly the target file with its content."""
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01payload")
    atomic_write_text(tmp_path / "b.json", '{"x": 1}\n')
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01payload"
    assert (tmp_path / "b.json").read_text() == '{"x": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]


def test_atomic_path_gives_a_temporary_name_in_the_same_folder(tmp_path: Path) -> None:
    """The yielded path is a hidden sibling; after the block only the target remains."""
    target = tmp_path / "cache.npy"
    with atomic_path(target) as tmp, tmp.open("wb") as fh:
        assert tmp.parent == tmp_path and tmp.name.startswith(".cache.npy.") and tmp != target
        np.save(fh, np.arange(3))
    assert np.array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npy"]


def test_an_existing_file_is_replaced(tmp_path: Path) -> None:
    """Writing over an existing file replaces its content and leaves no second file."""
    target = tmp_path / "policy.json"
    target.write_text("old\n")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]


def test_an_exception_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    """A failure inside the block re-raises, keeps the old content and leaves no temporary file."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="export failed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("export failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_block_that_writes_nothing_fails_without_leaving_anything(tmp_path: Path) -> None:
    """If the writer never created the temporary file, the target is not created either."""
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "never.bin"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_the_file_and_its_folder_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.fsync is called on the written file before the rename, then on the target's folder."""
    target = tmp_path / "manifest.json"
    synced: list[tuple[str, int, bool]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "file"
        synced.append((kind, info.st_size if kind == "file" else info.st_ino, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(target, "{}\n")
    # The file with its 3 bytes, not yet renamed; then the folder, once the target is there.
    assert synced == [("file", 3, False), ("dir", os.stat(tmp_path).st_ino, True)]
