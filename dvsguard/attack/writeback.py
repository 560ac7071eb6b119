"""Adversarial event counts written back as event recordings that frame to exactly those counts.

Given a sample's original recording and its clean and adversarial counts ``[T, 2, H, W]``
(:mod:`dvsguard.attack.events`), :func:`adversarial_events` returns the original events with
the deleted ones removed and the inserted ones added, so that
:func:`dvsguard.data.frames.events_to_frames` (what ``preprocess`` runs) gives the adversarial
counts bit for bit; :func:`write_recording` stores them as an ``.npz`` the folder reader accepts.

* An inserted event of frame bin ``(j, p, y, x)`` gets polarity ``p``, the first sensor pixel that
  the framing's downsampling maps to frame pixel ``(y, x)``, and the timestamp in the middle of
  time bin ``j`` (``t₀ + j·w + w // 2`` µs, ``w = (t_last − t₀) // T``).
* A deleted event is one of the bin's own events, never the recording's first or last (they
  fix ``t₀`` and ``w``). Where the recording holds more events in a bin than ``count_cap`` (the
  stored count is clipped), lowering the count by one removes the excess too: the recording
  loses more events than the frame budget counts, and the result says how many.

Only time-binned framing (``mode = "time"``) is realisable this way: with equal event counts
per frame (``mode = "events"``) every inserted or deleted event moves the boundaries of all later
frames, so no edit of one bin leaves the others as they are (an ``AttackError`` says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dvsguard.data.events import EVENT_DTYPE, Recording, write_npz
from dvsguard.data.frames import FramingConfig, _downsample, _slice_bounds, events_to_frames
from dvsguard.errors import AttackError


@dataclass(frozen=True)
class WriteBack:
    """One adversarial recording: its ``events`` [N'] (EVENT_DTYPE, sorted by t) and what changed.

    ``inserted``/``deleted`` count events of the recording (``deleted`` exceeds the frames'
    deletions where a clipped bin had more events than ``count_cap``).
    """

    events: np.ndarray
    inserted: int
    deleted: int


def check_realisable(cfg: FramingConfig) -> None:
    """``AttackError`` unless recordings framed by ``cfg`` can be edited bin by bin (time-binned counts)."""
    if cfg.method != "downsample":
        raise AttackError("writing recordings back needs counts framed by downsample (events protocol); "
                          f"these frames are framed by {cfg.method!r}")
    if cfg.mode != "time":
        raise AttackError(f"writing recordings back needs time-binned frames (preprocess --mode time): under mode "
                          f"{cfg.mode!r} every event inserted or deleted moves the boundaries of all later frames")


def _first_sensor_pixel(sensor_wh: tuple[int, int], cfg: FramingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(x ``[W]``, y ``[H]``): per frame column/row the first sensor column/row mapped to it (-1: none)."""
    w_s, h_s = sensor_wh
    out = []
    for axis, size, frame_size in (("x", w_s, cfg.width), ("y", h_s, cfg.height)):
        probe = np.zeros(size, dtype=EVENT_DTYPE)
        probe[axis] = np.arange(size)
        mapped = _downsample(probe, sensor_wh, cfg)[axis].astype(np.int64)
        first = np.full(frame_size, -1, dtype=np.int64)
        for s in range(size - 1, -1, -1):
            first[mapped[s]] = s
        out.append(first)
    return out[0], out[1]


def adversarial_events(rec: Recording, cfg: FramingConfig, clean: np.ndarray, adversarial: np.ndarray,
                       where: str = "recording") -> WriteBack:
    """The events of ``rec`` edited so that they frame (by ``cfg``) to ``adversarial``.

    ``clean`` and ``adversarial`` are the counts ``[T, 2, H, W]`` of ``rec`` as cached and as
    attacked. ``AttackError`` (naming ``where``) when the recording no longer frames to ``clean``,
    spans fewer than ``T`` µs, or an edit cannot be made (see the module docstring).
    """
    check_realisable(cfg)
    events = np.asarray(rec.events)
    if len(events) == 0:
        raise AttackError(f"{where}: holds no events; time bins are undefined")
    events = events[np.argsort(events["t"], kind="stable")]
    sensor_wh = (int(rec.sensor_size[0]), int(rec.sensor_size[1]))
    if not np.array_equal(events_to_frames(Recording(events, rec.sensor_size), cfg), clean):
        raise AttackError(f"{where}: does not frame to the cached counts (changed since the cache was built?)")
    t0, t_last = int(events["t"][0]), int(events["t"][-1])
    window = (t_last - t0) // cfg.n_frames
    if window < 1:
        raise AttackError(f"{where}: spans {t_last - t0} µs, fewer than the {cfg.n_frames} time bins")
    small = _downsample(events.copy(), sensor_wh, cfg)
    frame = np.empty(len(events), dtype=np.int64)
    for j, (a, b) in enumerate(_slice_bounds(small, cfg)):
        frame[a:b] = j
    bins = ((frame * 2 + small["p"].astype(np.int64)) * cfg.height + small["y"]) * cfg.width + small["x"]
    diff = adversarial.astype(np.int64).ravel() - clean.astype(np.int64).ravel()

    keep = np.ones(len(events), dtype=bool)
    protected = np.zeros(len(events), dtype=bool)
    protected[[0, -1]] = True
    target = adversarial.astype(np.int64).ravel()
    order = np.argsort(bins, kind="stable")
    starts = np.searchsorted(bins[order], np.arange(diff.size))
    ends = np.searchsorted(bins[order], np.arange(diff.size), side="right")
    for b in np.flatnonzero(diff < 0):
        members = order[starts[b] : ends[b]]
        removable = members[~protected[members]][::-1]
        excess = len(members) - int(target[b])
        if excess > len(removable):
            raise AttackError(f"{where}: cannot delete {excess} event(s) from frame bin {np.unravel_index(b, clean.shape)} "
                              f"without removing the recording's first or last event")
        keep[removable[:excess]] = False

    first_x, first_y = _first_sensor_pixel(sensor_wh, cfg)
    add = np.flatnonzero(diff > 0)
    j, p, y, x = np.unravel_index(add, clean.shape)
    if np.any(first_x[x] < 0) or np.any(first_y[y] < 0):
        raise AttackError(f"{where}: a frame pixel with inserted events has no sensor pixel mapped to it")
    repeat = diff[add]
    new = np.zeros(int(repeat.sum()), dtype=EVENT_DTYPE)
    new["t"] = np.repeat(t0 + j * window + window // 2, repeat)
    new["x"] = np.repeat(first_x[x], repeat)
    new["y"] = np.repeat(first_y[y], repeat)
    new["p"] = np.repeat(p, repeat)

    out = np.concatenate([events[keep].astype(EVENT_DTYPE), new])
    out = out[np.argsort(out["t"], kind="stable")]
    if not np.array_equal(events_to_frames(Recording(out, rec.sensor_size), cfg), adversarial):
        raise AttackError(f"{where}: the edited events do not frame to the adversarial counts")
    return WriteBack(events=out, inserted=len(new), deleted=int((~keep).sum()))


def write_recording(path: str | os.PathLike, result: WriteBack, sensor_size: tuple[int, ...]) -> Path:
    """Store ``result.events`` as an ``.npz`` recording (``events`` and ``sensor_size``), atomically."""
    return write_npz(path, result.events, sensor_size)
