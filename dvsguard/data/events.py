"""Read event recordings into one structured array.

Every reader returns a :class:`Recording`: events as a structured array of
:data:`EVENT_DTYPE` (x, y in pixels, t in microseconds, p in {0, 1}, sorted by t) and the
sensor size ``(W, H, 2)``. Any failure raises :class:`RecordingError` naming the file and
the cause in one line.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dvsguard.errors import RecordingError

log = logging.getLogger(__name__)

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
"""x, y: pixel column/row; t: timestamp in µs; p: polarity, 1 = ON, 0 = OFF."""


class Recording(NamedTuple):
    """One recording: ``events`` [N] of :data:`EVENT_DTYPE`, ``sensor_size`` (W, H, 2)."""

    events: np.ndarray
    sensor_size: tuple[int, int, int] = (128, 128, 2)


RECORDING_SUFFIXES: tuple[str, ...] = (".npy", ".npz")


def _normalise(path: Path, fields: dict[str, np.ndarray], sensor_size: tuple[int, int, int] | None) -> Recording:
    """Build a sorted EVENT_DTYPE array from x, y, t, p columns and check it."""
    n = len(fields["t"])
    for name in ("x", "y", "p"):
        if len(fields[name]) != n:
            raise RecordingError(f"{path}: field {name!r} has {len(fields[name])} values but t has {n}")
    if n == 0:
        raise RecordingError(f"{path}: recording holds no events")
    events = np.empty(n, dtype=EVENT_DTYPE)
    x = np.asarray(fields["x"])
    y = np.asarray(fields["y"])
    if x.min() < 0 or y.min() < 0:
        raise RecordingError(f"{path}: negative pixel coordinates")
    events["x"] = x
    events["y"] = y
    events["t"] = np.asarray(fields["t"]).astype(np.int64)
    p = np.asarray(fields["p"])
    events["p"] = (p > 0).astype(np.int8)
    if np.any(events["t"][1:] < events["t"][:-1]):
        events = events[np.argsort(events["t"], kind="stable")]
    if sensor_size is None:
        sensor_size = (int(x.max()) + 1, int(y.max()) + 1, 2)
    w, h = int(sensor_size[0]), int(sensor_size[1])
    if x.max() >= w or y.max() >= h:
        raise RecordingError(
            f"{path}: events at x up to {int(x.max())}, y up to {int(y.max())} lie outside the sensor {w}x{h}"
        )
    return Recording(events, (w, h, 2))


def _structured_fields(path: Path, arr: np.ndarray) -> dict[str, np.ndarray]:
    names = arr.dtype.names or ()
    missing = [f for f in ("x", "y", "t", "p") if f not in names]
    if missing:
        raise RecordingError(f"{path}: event array lacks field(s) {', '.join(missing)} (has {', '.join(names) or 'none'})")
    return {f: arr[f] for f in ("x", "y", "t", "p")}


def _read_numpy(path: Path) -> Recording:
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/zipfile errors
        raise RecordingError(f"{path}: not a readable numpy file ({type(exc).__name__}: {exc})") from None
    sensor_size = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            try:
                keys = set(loaded.files)
                if "events" in keys:
                    fields = _structured_fields(path, loaded["events"])
                elif {"x", "y", "t", "p"} <= keys:
                    fields = {f: loaded[f] for f in ("x", "y", "t", "p")}
                else:
                    raise RecordingError(f"{path}: npz holds neither 'events' nor x, y, t, p (has {', '.join(sorted(keys)) or 'nothing'})")
                if "sensor_size" in keys:
                    sensor_size = tuple(int(v) for v in loaded["sensor_size"])
            except RecordingError:
                raise
            except Exception as exc:
                raise RecordingError(f"{path}: damaged npz member ({type(exc).__name__}: {exc})") from None
    else:
        fields = _structured_fields(path, loaded)
    return _normalise(path, fields, sensor_size)


def read_events(path: str | os.PathLike) -> Recording:
    """Read one event recording, choosing the reader from the file suffix.

    Returns events sorted by t (µs) with p in {0, 1}, and the sensor size (W, H, 2).
    Raises RecordingError(f"{path}: <cause>") when the file is missing, empty,
    truncated, malformed, or of an unknown kind.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise RecordingError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return _read_numpy(path)
    raise RecordingError(f"{path}: unknown recording format {suffix or '(no suffix)'}; known: {', '.join(RECORDING_SUFFIXES)}")


def write_npz(path: str | os.PathLike, events: np.ndarray, sensor_size: tuple[int, int, int]) -> Path:
    """Write events [N] of EVENT_DTYPE and sensor_size (W, H, 2) to ``path`` (.npz) atomically."""
    path = Path(path)
    events = np.asarray(events)
    if events.dtype != EVENT_DTYPE:
        converted = np.empty(len(events), dtype=EVENT_DTYPE)
        for f in ("x", "y", "t", "p"):
            converted[f] = events[f]
        events = converted
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, events=events, sensor_size=np.asarray(sensor_size, dtype=np.int64))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
