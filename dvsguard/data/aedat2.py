"""AEDAT 2.0 DVS128 address-events: the layout of the original CIFAR10-DVS release.

tonic 1.7.0's ``tonic.io.read_dvs_128`` cannot read these files (it unpacks two values from a
header parser that returns three), and no other maintained package reads them, so this is a
small numpy decoder.

File layout (jAER AEDAT 2.0): text header lines that start with ``#`` (the first one is
``#!AER-DAT2.0``), then events of 8 bytes each: a big-endian uint32 address and a big-endian
uint32 timestamp in µs. The DVS128 address packs

- bit 0: polarity (raw 1 = OFF, 0 = ON),
- bits 1-7: sensor column (raw x, 0..127),
- bits 8-14: sensor row (raw y, 0..127).

The recording rig of CIFAR10-DVS had the sensor rotated, so, as spikingjelly's CIFAR10-DVS
loader does, the image-upright coordinates are ``x = 127 - raw_y``, ``y = 127 - raw_x`` and
ON polarity is ``p = 1 - raw_p``. Addresses with bit 15 or higher set are not polarity events
(bit 15 marks external events): a few are dropped; a file made mostly of them is rejected as
another sensor's layout.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from dvsguard.atomic import atomic_open
from dvsguard.errors import RecordingError
from dvsguard.limits import MAX_EVENTS

log = logging.getLogger(__name__)

SENSOR_SIZE = (128, 128, 2)
"""DVS128: (W, H, 2)."""

_RAW = np.dtype([("address", ">u4"), ("t", ">u4")])
_HEADER = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n" \
    b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n" \
    b"# Timestamps tick is 1 us\r\n"


def header_length(data: bytes) -> int:
    """Byte offset where the binary events start: after all ``#`` header lines."""
    pos = 0
    while pos < len(data) and data[pos:pos + 1] == b"#":
        end = data.find(b"\n", pos)
        if end < 0:
            return len(data)
        pos = end + 1
    return pos


_HEADER_MAX = 1 << 20  # bytes of ``#`` header lines read at most (jAER headers are a few KB)
_CHUNK_EVENTS = 1 << 22  # events decoded at a time (32 MiB of raw words)


def decode_aedat2_dvs128(path: Path) -> dict[str, np.ndarray]:
    """Decode a DVS128 AEDAT 2.0 file into x, y (upright, pixels), t (µs, int64), p ({0, 1}) columns.

    The event count the file size implies is checked against :data:`dvsguard.limits.MAX_EVENTS`
    first; the events are then decoded from a memory map in chunks of ``_CHUNK_EVENTS``, so the
    memory used is that of the output columns (13 bytes per event) plus one chunk.

    Raises RecordingError when the header is not AEDAT 1/2, the event block is empty or
    its length is not a whole number of 8-byte events, or it holds more events than the limit.
    """
    with path.open("rb") as fh:
        head = fh.read(_HEADER_MAX)
    size = path.stat().st_size
    start = header_length(head)
    first = head[: head.find(b"\n") + 1] if start else b""
    if first.startswith(b"#!AER-DAT") and not first.startswith((b"#!AER-DAT1", b"#!AER-DAT2")):
        version = first[len(b"#!AER-DAT"):].strip().decode("ascii", "replace")
        raise RecordingError(f"{path}: AEDAT version {version} is not AEDAT 2.0 DVS128 address-events")
    body = size - start
    if body == 0:
        raise RecordingError(f"{path}: AEDAT 2.0 file holds a header but no events")
    if body % _RAW.itemsize:
        raise RecordingError(
            f"{path}: truncated AEDAT 2.0 event block ({body} bytes is not a multiple of {_RAW.itemsize})"
        )
    n = body // _RAW.itemsize
    MAX_EVENTS.check(n, str(path), f"AEDAT 2.0 event block of {body:,} bytes", RecordingError)
    raw = np.memmap(path, dtype=_RAW, mode="r", offset=start, shape=(n,))
    address = np.empty(n, dtype=np.uint32)
    t = np.empty(n, dtype=np.int64)
    kept = 0
    for i in range(0, n, _CHUNK_EVENTS):
        block = raw[i : i + _CHUNK_EVENTS]
        a = block["address"].astype(np.uint32)
        polarity = a < (1 << 15)  # bit 15: DVS128 external events; higher bits: other sensors
        m = int(polarity.sum())
        address[kept : kept + m] = a[polarity]
        t[kept : kept + m] = block["t"][polarity]
        kept += m
    del raw
    foreign = n - kept
    if foreign > 0.01 * n:
        raise RecordingError(
            f"{path}: {foreign / n:.0%} of the addresses use bits above 14, so this is not a DVS128 "
            "recording (AEDAT 2.0 files of DAVIS sensors use another address layout)"
        )
    if foreign:
        log.debug("%s: dropping %d external/special events", path, foreign)
        if not kept:
            raise RecordingError(f"{path}: AEDAT 2.0 file holds no polarity events")
    address, t = address[:kept], t[:kept]
    # 32-bit µs timestamps wrap after ~71.6 min; unwrap so t stays monotonic.
    wraps = np.flatnonzero(np.diff(t) < -(1 << 31))
    for w in wraps:
        t[w + 1 :] += 1 << 32
    return {
        "x": (127 - ((address >> 8) & 0x7F)).astype(np.int16),
        "y": (127 - ((address >> 1) & 0x7F)).astype(np.int16),
        "t": t,
        "p": (1 - (address & 0x1)).astype(np.int8),
    }


def write_aedat2_dvs128(path: str | os.PathLike, events: np.ndarray) -> Path:
    """Write events (fields x, y in 0..127, t in µs < 2**32, p in {0, 1}) as a DVS128 AEDAT 2.0 file.

    The inverse of :func:`decode_aedat2_dvs128`, written atomically; used by tests and for
    exporting recordings to tools that read the CIFAR10-DVS layout.
    """
    path = Path(path)
    x = np.asarray(events["x"], dtype=np.int64)
    y = np.asarray(events["y"], dtype=np.int64)
    if x.min(initial=0) < 0 or y.min(initial=0) < 0 or x.max(initial=0) > 127 or y.max(initial=0) > 127:
        raise RecordingError(f"{path}: DVS128 events need x, y in 0..127")
    raw = np.empty(len(x), dtype=_RAW)
    raw_x = 127 - y
    raw_y = 127 - x
    raw_p = 1 - (np.asarray(events["p"]) > 0).astype(np.int64)
    raw["address"] = (raw_y << 8) | (raw_x << 1) | raw_p
    raw["t"] = np.asarray(events["t"], dtype=np.int64)
    with atomic_open(path, "wb") as fh:
        fh.write(_HEADER)
        fh.write(raw.tobytes())
    return path
