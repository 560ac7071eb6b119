"""Atomic writes: the previous file survives a failing writer, no temporary file is left,
the file and its folder are fsynced, and files get 0666 minus the umask."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import pytest

from dvsguard import atomic
from dvsguard.atomic import atomic_open, atomic_path, fsync_path, write_bytes, write_text


class WriterFailed(Exception):
    pass


@pytest.fixture
def umask_027() -> Iterator[int]:
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _fsync_recorder(monkeypatch: pytest.MonkeyPatch, fail: Callable[[bool], OSError | None] = lambda is_dir: None,
                    ) -> list[str]:
    """Replace os.fsync by one that records "dir"/"file" per call and raises ``fail(is_dir)`` if not None."""
    real = os.fsync
    calls: list[str] = []

    def fsync(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        calls.append("dir" if is_dir else "file")
        error = fail(is_dir)
        if error is not None:
            raise error
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_replaces_the_target_with_the_usual_permissions(tmp_path: Path, umask_027: int) -> None:
    target = tmp_path / "sub" / "net.h5"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.exists() and tmp != target
        with h5py.File(tmp, "w") as f:
            f["x"] = [1, 2, 3]
    with h5py.File(target, "r") as f:
        assert list(f["x"][()]) == [1, 2, 3]
    assert _files(target.parent) == ["net.h5"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask_027 == 0o640


def test_overwritten_file_gets_the_usual_permissions_not_the_old_ones(tmp_path: Path, umask_027: int) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    target.chmod(0o600)
    write_text(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


@pytest.mark.parametrize("writer", ["path", "open"])
def test_failing_writer_leaves_the_previous_file_and_no_temporary_file(tmp_path: Path, writer: str) -> None:
    target = tmp_path / "report.json"
    target.write_text("previous")
    with pytest.raises(WriterFailed):
        if writer == "path":
            with atomic_path(target) as tmp:
                tmp.write_text("half")
                raise WriterFailed
        else:
            with atomic_open(target, "w") as fh:
                fh.write("half")
                raise WriterFailed
    assert target.read_text() == "previous"
    assert _files(tmp_path) == ["report.json"]


def test_failing_writer_without_a_previous_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(WriterFailed):
        with atomic_path(tmp_path / "new.pt"):
            raise WriterFailed
    assert _files(tmp_path) == []


def test_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fsync_recorder(monkeypatch)
    target = tmp_path / "x.bin"
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_bytes(target, b"data")
    assert calls == ["file", "rename", "dir"]
    assert target.read_bytes() == b"data"


def test_failing_file_fsync_leaves_the_previous_file_and_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"previous")
    _fsync_recorder(monkeypatch, lambda is_dir: None if is_dir else OSError(errno.EIO, "I/O error"))
    with pytest.raises(OSError, match="I/O error"):
        write_bytes(target, b"new")
    assert target.read_bytes() == b"previous"
    assert _files(tmp_path) == ["x.bin"]


def test_failing_folder_fsync_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fsync_recorder(monkeypatch, lambda is_dir: OSError(errno.EIO, "I/O error") if is_dir else None)
    with pytest.raises(OSError, match="I/O error"):
        write_bytes(tmp_path / "x.bin", b"new")
    assert calls == ["file", "dir"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_folder_fsync_unsupported_by_the_file_system_is_passed_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fsync_recorder(monkeypatch, lambda is_dir: OSError(errno.EINVAL, "Invalid argument") if is_dir else None)
    write_bytes(tmp_path / "x.bin", b"new")
    assert calls == ["file", "dir"]
    assert (tmp_path / "x.bin").read_bytes() == b"new"


def test_file_fsync_errors_are_raised_whatever_the_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.bin").write_bytes(b"data")
    _fsync_recorder(monkeypatch, lambda is_dir: OSError(errno.EINVAL, "Invalid argument"))
    with pytest.raises(OSError, match="Invalid argument"):
        fsync_path(tmp_path / "x.bin")


def test_atomic_open_refuses_partial_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole files"):
        with atomic_open(tmp_path / "x", "a"):
            pass
    assert _files(tmp_path) == []


def test_replace_moves_a_finished_file_over_the_target(tmp_path: Path, umask_027: int) -> None:
    src = tmp_path / "cache.h5.partial"
    src.write_bytes(b"frames")
    src.chmod(0o600)
    (tmp_path / "cache.h5").write_bytes(b"old")
    assert atomic.replace(src, tmp_path / "cache.h5") == tmp_path / "cache.h5"
    assert _files(tmp_path) == ["cache.h5"]
    assert (tmp_path / "cache.h5").read_bytes() == b"frames"
    assert stat.S_IMODE((tmp_path / "cache.h5").stat().st_mode) == 0o640
