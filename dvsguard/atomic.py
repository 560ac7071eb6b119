"""Atomic file writes: a temporary file in the target's folder, fsync, ``os.replace``, fsync of the folder.

A crash or an exception part way leaves the previous file (if any) intact and no temporary
file behind. Files get the usual permissions (0666 minus the umask), whatever the
temporary file was created with.

* :func:`atomic_open` yields a file object; :func:`write_bytes` and :func:`write_text` wrap it.
* :func:`atomic_path` yields a temporary path, for writers that open the file themselves
  (``h5py.File(path, "w")``, ``torch.save(obj, path)``).
* :func:`replace` is the last step of both, for a file built elsewhere in the target's
  folder (the frame cache's resumable ``.partial`` file).
* :func:`fsync_path` fsyncs a file or a folder by path.

A write that fails because the disk is full or the quota is used up (ENOSPC, EDQUOT) is
raised as :class:`~dvsguard.errors.OutputError` naming the target (``<path>: no space left
on device``); :func:`disk_full` tells such an error apart. Temporary files are named
``.<name>.XXXX.tmp`` (:data:`TEMP_PREFIX`/:data:`TEMP_SUFFIX`); :func:`remove_stale` removes
those a killed writer left in a folder.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from dvsguard.errors import OutputError

# errors of fsync on a folder that mean "not supported by this file system", not "not written"
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


# errors of a write that mean "the disk (or the user's quota) is full", and how to say so
_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
TEMP_SUFFIX = ".tmp"


def disk_full(exc: BaseException) -> str | None:
    """``"no space left on device"`` / ``"disk quota exceeded"`` when ``exc`` (or its cause) is such an OSError."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return _DISK_FULL[exc.errno]
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def remove_stale(folder: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left in ``folder`` for the targets ``names``.

    Only files named like this module's temporaries (``.<name>.<8 characters>.tmp``) of those
    names are removed, nothing else; a writer killed mid-write leaves them behind. Returns the
    paths removed.
    """
    folder = Path(folder)
    removed = []
    for name in names:
        prefix = f".{name}."
        for tmp in folder.glob(f"{glob.escape(prefix)}*{TEMP_SUFFIX}"):
            middle = tmp.name[len(prefix):-len(TEMP_SUFFIX)]
            if tmp.is_file() and not tmp.is_symlink() and len(middle) == 8 and "." not in middle:
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync the file or folder at ``path``.

    A folder on a file system that cannot fsync folders (EINVAL, ENOTSUP) is passed over;
    every other error is raised.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED or not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise
    finally:
        os.close(fd)


def replace(src: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move the finished file ``src`` over ``target`` durably; returns ``target`` as a Path.

    fsyncs ``src``, gives it the usual permissions, renames it with ``os.replace`` (``src``
    must be in ``target``'s folder for the rename to be atomic) and fsyncs the folder so
    the rename itself survives a crash.
    """
    target = Path(target)
    fsync_path(src)
    os.chmod(src, 0o666 & ~_umask())
    os.replace(src, target)
    fsync_path(target.parent)
    return target


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder that replaces ``path`` when the block ends without error.

    The temporary file exists (empty) when the block starts; the writer may open it or
    overwrite it by name, and must have closed it when the block ends. Then it is moved
    over ``path`` with :func:`replace`. On an exception the temporary file is removed and
    ``path`` is left as it was. The parent folder is created. A full disk or quota
    (while creating, writing, fsyncing or renaming) is raised as ``OutputError`` naming ``path``.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        _raise_disk_full(exc, target)
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_disk_full(exc, target)
        raise


def _raise_disk_full(exc: BaseException, target: Path) -> None:
    """Raise ``OutputError("<target>: no space left on device")`` if ``exc`` is a full disk or quota."""
    reason = disk_full(exc)
    if reason is not None and not isinstance(exc, OutputError):
        raise OutputError(f"{target}: {reason}") from exc


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` when the block ends without error.

    ``mode`` is ``"wb"`` or ``"w"`` (text; ``kwargs`` go to ``open``, e.g. ``encoding``).
    The parent folder is created. See :func:`atomic_path`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (newlines as given)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return Path(path)
