"""Read event recordings into one structured array.

:func:`read_events` picks the reader from the file suffix (and, for ``.aedat`` and ``.raw``,
from the header) and returns a :class:`Recording`: events as a structured array of
:data:`EVENT_DTYPE` (x, y in pixels, t in microseconds, p in {0, 1}, sorted by t) and the
sensor size ``(W, H, 2)``. Any failure raises :class:`RecordingError` naming the file and the
cause in one line.

Formats and the library that reads each:

- ``.aedat4`` (and ``.aedat`` starting ``#!AER-DAT4``): AEDAT 4.0 through the ``aedat``
  package (what ``tonic.io.read_aedat4`` calls), first event stream, sensor size from the
  stream description.
- ``.aedat`` (AEDAT 1/2): DVS128 address-events in the original CIFAR10-DVS layout,
  decoded by :mod:`dvsguard.data.aedat2` (no maintained reader works on these files).
- ``.dat`` (Prophesee DAT), ``.raw`` (Prophesee EVT 2.0 / EVT 3.0, told apart by the
  header) through ``expelliarmus``.
- ``.npy`` (structured array with fields x, y, t, p), ``.npz`` (``events`` structured array
  or x, y, t, p arrays, optional ``sensor_size``).
- ``.h5`` / ``.hdf5`` through h5py: a structured dataset ``events`` (or ``CD/events``, the
  Prophesee/Metavision layout), or datasets ``x``, ``y``, ``t``, ``p`` at the root or in an
  ``events`` group; sensor size from attributes ``sensor_size``, ``width``/``height`` or
  ``geometry`` ("WxH").

Where a file does not state its sensor size (npy, npz/HDF5 without it, Prophesee headers
without geometry), it is: for Prophesee files, the usual sensor of the generation the header
names (``plugin_name``, e.g. gen3 → 640×480) or else of the encoding (EVT2 640×480, EVT3
1280×720, DAT 304×240) when the events fit in it (a debug log notes the guess); otherwise
the smallest sensor that holds the events. Pass ``sensor_size`` to :func:`read_events` to
fix it, which matters when a folder of such files is framed at one scale.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

import numpy as np

from dvsguard.atomic import atomic_open
from dvsguard.errors import RecordingError
from dvsguard.limits import MAX_ARRAY_BYTES, MAX_EVENTS

if TYPE_CHECKING:  # pragma: no cover
    import h5py

log = logging.getLogger(__name__)

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
"""x, y: pixel column/row; t: timestamp in µs; p: polarity, 1 = ON, 0 = OFF."""

SensorSize = tuple[int, int, int]


class Recording(NamedTuple):
    """One recording: ``events`` [N] of :data:`EVENT_DTYPE` sorted by t, ``sensor_size`` (W, H, 2)."""

    events: np.ndarray
    sensor_size: SensorSize = (128, 128, 2)


RECORDING_SUFFIXES: tuple[str, ...] = (".aedat4", ".aedat", ".dat", ".raw", ".npy", ".npz", ".h5", ".hdf5")
"""File suffixes :func:`read_events` knows (lower case)."""

_FIELD_ALIASES = {
    "x": ("x",),
    "y": ("y",),
    "t": ("t", "ts", "timestamp", "timestamps"),
    "p": ("p", "polarity", "pol"),
}


# --------------------------------------------------------------------------- normalising


def _normalise(
    path: Path,
    fields: dict[str, np.ndarray],
    stated_size: tuple[int, int] | None,
    typical_size: tuple[int, int] | None = None,
) -> Recording:
    """Build a t-sorted EVENT_DTYPE array from x, y, t, p columns and check it against the sensor.

    ``stated_size`` (W, H) comes from the file or the caller and is binding; without it the
    sensor is ``typical_size`` when the events fit in it, else the smallest that holds them.
    """
    try:
        columns = {k: np.asarray(v).reshape(-1) for k, v in fields.items()}
        n = len(columns["t"])
        for name in ("x", "y", "p"):
            if len(columns[name]) != n:
                raise RecordingError(f"{path}: field {name!r} has {len(columns[name])} values but t has {n}")
        if n == 0:
            raise RecordingError(f"{path}: recording holds no events")
        for name, col in columns.items():
            if not (np.issubdtype(col.dtype, np.number) or col.dtype == np.bool_):
                raise RecordingError(f"{path}: field {name!r} is not numeric (dtype {col.dtype})")
            if np.issubdtype(col.dtype, np.complexfloating):
                raise RecordingError(f"{path}: field {name!r} is complex (dtype {col.dtype})")
        _check_values(path, columns)
        t = columns["t"]
        if np.issubdtype(t.dtype, np.floating):
            t = np.rint(t)
        x = columns["x"].astype(np.int64)
        y = columns["y"].astype(np.int64)
    except RecordingError:
        raise
    except (ValueError, TypeError) as exc:
        raise RecordingError(f"{path}: malformed event fields ({exc})") from None
    if x.min() < 0 or y.min() < 0:
        raise RecordingError(f"{path}: negative pixel coordinates")
    need = (int(x.max()) + 1, int(y.max()) + 1)
    if stated_size is not None:
        w, h = int(stated_size[0]), int(stated_size[1])
        if need[0] > w or need[1] > h:
            raise RecordingError(
                f"{path}: events at x up to {need[0] - 1}, y up to {need[1] - 1} lie outside the sensor {w}x{h}"
            )
    elif typical_size is not None and need[0] <= typical_size[0] and need[1] <= typical_size[1]:
        w, h = typical_size
        log.debug("%s: sensor size not stated in the file; assuming the format's typical %dx%d", path, w, h)
    else:
        w, h = need
        log.debug("%s: sensor size not stated in the file; using the smallest that holds the events, %dx%d", path, w, h)
    if w > np.iinfo(np.int16).max or h > np.iinfo(np.int16).max:
        raise RecordingError(f"{path}: sensor {w}x{h} is too large for int16 coordinates")
    events = np.empty(n, dtype=EVENT_DTYPE)
    events["x"] = x
    events["y"] = y
    events["t"] = t.astype(np.int64)
    events["p"] = (columns["p"] > 0).astype(np.int8)
    if n > 1 and np.any(events["t"][1:] < events["t"][:-1]):
        events = events[np.argsort(events["t"], kind="stable")]
    return Recording(events, (w, h, 2))


_WHAT = {"x": "pixel coordinates", "y": "pixel coordinates", "t": "timestamps", "p": "polarity values"}
_T_LIMIT = 2.0**62  # µs (about 146 000 years): beyond it int64 microseconds overflow or lose meaning
_XY_LIMIT = np.iinfo(np.int16).max


def _check_values(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Refuse values that cannot be converted to :data:`EVENT_DTYPE` faithfully: NaN/inf in any
    field, fractional pixel coordinates, coordinates beyond int16 and timestamps beyond int64 µs."""
    for name, col in columns.items():
        what = _WHAT[name]
        if np.issubdtype(col.dtype, np.floating) and not np.all(np.isfinite(col)):
            kind = "NaN" if np.isnan(col).any() else "inf"
            first = int(np.flatnonzero(~np.isfinite(col))[0])
            raise RecordingError(f"{path}: non-finite {what} ({kind} in field {name!r}, first at event {first})")
        if col.dtype == np.bool_:
            continue
        if name in ("x", "y"):
            if np.issubdtype(col.dtype, np.floating) and np.any(col != np.floor(col)):
                first = int(np.flatnonzero(col != np.floor(col))[0])
                raise RecordingError(f"{path}: non-integer {what} in field {name!r} ({float(col[first]):g} at event {first})")
            if col.max() > _XY_LIMIT:
                raise RecordingError(f"{path}: {what} in field {name!r} reach {col.max():.6g}, beyond any sensor "
                                     f"(at most {_XY_LIMIT})")
        if name == "t" and (col.max() > _T_LIMIT or col.min() < -_T_LIMIT):
            worst = col.max() if col.max() > _T_LIMIT else col.min()
            raise RecordingError(f"{path}: timestamps reach {float(worst):.6g} µs, beyond 64-bit microseconds "
                                 f"(|t| at most {_T_LIMIT:.3g})")


def _pick_fields(path: Path, names: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    """Map x, y, t, p onto the names a file uses (``ts``, ``polarity``...); error if any is missing."""
    chosen: dict[str, str] = {}
    for field, aliases in _FIELD_ALIASES.items():
        match = next((a for a in aliases if a in names), None)
        if match is not None:
            chosen[field] = match
    missing = [f for f in _FIELD_ALIASES if f not in chosen]
    if missing:
        raise RecordingError(
            f"{path}: {what} lacks field(s) {', '.join(missing)} (has {', '.join(names) or 'none'})"
        )
    return chosen


def _size_pair(value: object) -> tuple[int, int] | None:
    """(W, H) from a sensor_size array/tuple or a "WxH" string; None when it cannot be parsed."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        m = re.search(r"(\d+)\s*[xX]\s*(\d+)", value)
        return (int(m.group(1)), int(m.group(2))) if m else None
    try:
        arr = np.asarray(value).reshape(-1)
        if len(arr) >= 2 and arr[0] > 0 and arr[1] > 0:
            return int(arr[0]), int(arr[1])
    except (TypeError, ValueError):
        pass
    return None


# --------------------------------------------------------------------------- numpy


def _check_npy_claim(path: Path, fh: IO[bytes], what: str) -> None:
    """Refuse an npy header (``fh`` at its start) whose shape claims more than :data:`MAX_EVENTS`
    values or :data:`MAX_ARRAY_BYTES` bytes, before numpy allocates the array. A header that
    cannot be parsed is left for ``np.load`` to report."""
    try:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
    except (ValueError, OSError, EOFError):
        return
    count = int(np.prod(shape, dtype=object))
    MAX_EVENTS.check(count, str(path), what, RecordingError)
    MAX_ARRAY_BYTES.check(count * dtype.itemsize, str(path), what, RecordingError)


def _check_numpy_claims(path: Path) -> None:
    """Check the header of the ``.npy`` file, or of every member of the ``.npz`` archive, at ``path``."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.endswith(".npy"):
                    with archive.open(member) as fh:
                        _check_npy_claim(path, fh, f"npz member {member.filename[:-4]!r}")
    else:
        with path.open("rb") as fh:
            _check_npy_claim(path, fh, "npy array")


def _read_numpy(path: Path) -> tuple[dict[str, np.ndarray], tuple[int, int] | None]:
    try:
        _check_numpy_claims(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise RecordingError(f"{path}: not a readable numpy file ({type(exc).__name__}: {exc})") from None
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/BadZipFile...
        raise RecordingError(f"{path}: not a readable numpy file ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        if loaded.dtype.names is None:
            raise RecordingError(f"{path}: npy holds a plain {loaded.dtype} array, not a structured x, y, t, p array")
        names = _pick_fields(path, loaded.dtype.names, "event array")
        return {f: loaded[n] for f, n in names.items()}, None
    with loaded:
        try:
            keys = list(loaded.files)
            size = _size_pair(loaded["sensor_size"]) if "sensor_size" in keys else None
            if "events" in keys:
                arr = loaded["events"]
                if arr.dtype.names is None:
                    raise RecordingError(f"{path}: npz member 'events' is a plain {arr.dtype} array, not structured")
                names = _pick_fields(path, arr.dtype.names, "npz member 'events'")
                return {f: arr[n] for f, n in names.items()}, size
            names = _pick_fields(path, keys, "npz")
            return {f: loaded[n] for f, n in names.items()}, size
        except RecordingError:
            raise
        except Exception as exc:  # a damaged member surfaces only when read
            raise RecordingError(f"{path}: damaged npz member ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- HDF5


def _h5_size(*nodes: object) -> tuple[int, int] | None:
    for node in nodes:
        attrs = getattr(node, "attrs", {})
        for key in ("sensor_size", "geometry"):
            if key in attrs and (size := _size_pair(attrs[key])) is not None:
                return size
        if "width" in attrs and "height" in attrs:
            return int(np.asarray(attrs["width"]).reshape(-1)[0]), int(np.asarray(attrs["height"]).reshape(-1)[0])
    return None


def _check_h5_claim(path: Path, node: h5py.Dataset, name: str) -> None:
    """Refuse a dataset declared with more than :data:`MAX_EVENTS` values or :data:`MAX_ARRAY_BYTES`
    bytes (a chunked dataset is declared at any size in a few bytes) before it is read."""
    what = f"HDF5 dataset {name!r}"
    MAX_EVENTS.check(int(node.size), str(path), what, RecordingError)
    MAX_ARRAY_BYTES.check(int(node.size) * node.dtype.itemsize, str(path), what, RecordingError)


def _read_hdf5(path: Path) -> tuple[dict[str, np.ndarray], tuple[int, int] | None]:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except Exception as exc:  # OSError for truncated/foreign files
        raise RecordingError(f"{path}: not a readable HDF5 file ({exc})") from None
    with fh:
        try:
            for name in ("events", "CD/events"):
                node = fh.get(name)
                if isinstance(node, h5py.Dataset) and node.dtype.names:
                    names = _pick_fields(path, node.dtype.names, f"HDF5 dataset {name!r}")
                    _check_h5_claim(path, node, name)
                    try:
                        arr = node[()]
                    except OSError as exc:
                        raise RecordingError(
                            f"{path}: cannot decode HDF5 dataset {name!r} ({exc}); Prophesee files need "
                            "their ECF codec plugin (pip install hdf5plugin, then import it)"
                        ) from None
                    return {f: arr[n] for f, n in names.items()}, _h5_size(node, node.parent, fh)
            for group in (fh.get("events"), fh):
                if isinstance(group, h5py.Group):
                    keys = [k for k in group.keys() if isinstance(group[k], h5py.Dataset)]
                    if {"x", "y"} <= set(keys):
                        names = _pick_fields(path, keys, f"HDF5 group {group.name!r}")
                        for n in names.values():
                            _check_h5_claim(path, group[n], group[n].name)
                        return {f: group[n][()] for f, n in names.items()}, _h5_size(group, fh)
            raise RecordingError(
                f"{path}: HDF5 file holds no 'events' dataset nor x, y, t, p datasets "
                f"(top level: {', '.join(fh.keys()) or 'nothing'})"
            )
        except RecordingError:
            raise
        except Exception as exc:
            raise RecordingError(f"{path}: damaged HDF5 content ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- AEDAT


def _read_aedat4(path: Path) -> tuple[dict[str, np.ndarray], tuple[int, int] | None]:
    import aedat

    try:
        decoder = aedat.Decoder(path)
        streams = decoder.id_to_stream()
        event_ids = sorted(i for i, s in streams.items() if s.get("type") == "events")
        if not event_ids:
            raise RecordingError(f"{path}: AEDAT 4 file holds no event stream")
        target = event_ids[0]
        info = streams[target]
        packets = []
        n_events = 0
        for packet in decoder:
            if packet["stream_id"] == target and "events" in packet:
                packets.append(packet["events"])
                n_events += len(packet["events"])
                MAX_EVENTS.check(n_events, str(path), "AEDAT 4 event stream", RecordingError)
    except RecordingError:
        raise
    except Exception as exc:  # the decoder raises RuntimeError/OSError with a message
        raise RecordingError(f"{path}: cannot decode AEDAT 4 ({exc})") from None
    if not packets:
        raise RecordingError(f"{path}: AEDAT 4 event stream holds no events")
    arr = np.concatenate(packets)
    size = (int(info["width"]), int(info["height"])) if "width" in info and "height" in info else None
    return {"x": arr["x"], "y": arr["y"], "t": arr["t"], "p": arr["on"]}, size


def _read_aedat(path: Path) -> tuple[dict[str, np.ndarray], tuple[int, int] | None]:
    with path.open("rb") as fh:
        first = fh.readline(64)
    if first.startswith(b"#!AER-DAT4"):
        return _read_aedat4(path)
    from dvsguard.data.aedat2 import SENSOR_SIZE, decode_aedat2_dvs128

    return decode_aedat2_dvs128(path), SENSOR_SIZE[:2]


# --------------------------------------------------------------------------- Prophesee

# Typical sensor of each encoding, used only when the header does not state the geometry.
_TYPICAL_SIZE = {"evt2": (640, 480), "evt3": (1280, 720), "dat": (304, 240)}
# Sensor generations named in headers (plugin_name / sensor_generation) and their geometry.
_GENERATION_SIZE = (
    (re.compile(r"gen ?3|3\.[01]"), (640, 480)),
    (re.compile(r"gen ?4|imx636|4\.[12]"), (1280, 720)),
    (re.compile(r"imx8|genx320|320"), (320, 320)),
)
_WORD_BYTES = {"evt2": 4, "evt3": 2, "dat": 8}


def _prophesee_header(path: Path) -> tuple[int, dict[str, str]]:
    """Length of the ``%`` text header and its ``key value`` lines (keys lower-cased)."""
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
    pos = 0
    info: dict[str, str] = {}
    while head[pos:pos + 1] == b"%":
        end = head.find(b"\n", pos)
        if end < 0:
            break
        line = head[pos + 1:end].decode("ascii", "replace").strip()
        key, _, value = line.partition(" ")
        pos = end + 1
        if key.lower() == "end":  # newer headers close with "% end"
            break
        if key:
            info[key.lower()] = value.strip()
    return pos, info


def _prophesee_size(info: dict[str, str]) -> tuple[int, int] | None:
    """(W, H) a Prophesee header states: ``geometry``, the ``format`` line's width/height, or Width/Height."""
    if "geometry" in info and (size := _size_pair(info["geometry"])) is not None:
        return size
    fmt = info.get("format", "")
    w, h = re.search(r"width=(\d+)", fmt), re.search(r"height=(\d+)", fmt)
    if w and h:
        return int(w.group(1)), int(h.group(1))
    if "width" in info and "height" in info:
        try:
            return int(info["width"]), int(info["height"])
        except ValueError:
            pass
    return None


def _generation_size(info: dict[str, str], encoding: str) -> tuple[int, int]:
    """The usual sensor of the generation a header names (plugin or sensor), else of the encoding."""
    hint = " ".join(info.get(k, "") for k in ("plugin_name", "sensor_generation", "sensor_name")).lower()
    for pattern, size in _GENERATION_SIZE:
        if hint.strip() and pattern.search(hint):
            return size
    return _TYPICAL_SIZE[encoding]


def _raw_encoding(path: Path, info: dict[str, str]) -> str:
    evt = info.get("evt", "")
    fmt = info.get("format", "").upper()
    if evt.startswith("2") or fmt.startswith("EVT2;") or fmt == "EVT2":
        if fmt.startswith("EVT21"):
            raise RecordingError(f"{path}: Prophesee EVT 2.1 is not supported (EVT 2.0 and 3.0 are)")
        return "evt2"
    if evt.startswith("3") or fmt.startswith("EVT3"):
        return "evt3"
    if fmt.startswith("EVT21") or evt.startswith("2.1"):
        raise RecordingError(f"{path}: Prophesee EVT 2.1 is not supported (EVT 2.0 and 3.0 are)")
    raise RecordingError(f"{path}: .raw header names no event encoding ('% evt 2.0' or '% evt 3.0' expected)")


_DAT_CD_TYPES = (0x00, 0x0C)  # event type byte of CD events: older (ATIS, Gen1) and Metavision writers
_DAT_JITTER_US = 1_000_000  # a backwards step larger than this (and not a 32-bit wrap) is not a camera's


def _check_dat(path: Path, header: int) -> None:
    """Refuse a DAT body that is not CD events: its event type/size bytes, polarities (0 or 1)
    and 32-bit timestamps (non-decreasing but for jitter and wraps past 2**32 µs) are checked
    on the raw words, as the decoder accepts any bytes."""
    with path.open("rb") as fh:
        fh.seek(header)
        ev_type, ev_size = fh.read(2)
    if ev_size != 8:
        raise RecordingError(f"{path}: Prophesee DAT header declares {ev_size}-byte events, expected 8 (CD events)")
    if ev_type not in _DAT_CD_TYPES:
        raise RecordingError(f"{path}: Prophesee DAT event type 0x{ev_type:02x} is not CD events (0x00 or 0x0c)")
    words = np.memmap(path, dtype="<u4", mode="r", offset=header + 2).reshape(-1, 2)
    ts, polarity = words[:, 0].astype(np.int64), words[:, 1] >> 28
    if polarity.max() > 1:
        first = int(np.flatnonzero(polarity > 1)[0])
        raise RecordingError(f"{path}: Prophesee DAT polarity {int(polarity[first])} at event {first} "
                             "(CD events carry 0 or 1); not an event stream")
    step = np.diff(ts)
    back = np.flatnonzero((step < -_DAT_JITTER_US) & (step > -(1 << 31)))
    if len(back):
        i = int(back[0]) + 1
        raise RecordingError(f"{path}: Prophesee DAT timestamps go back from {ts[i - 1]} to {ts[i]} µs at event {i}; "
                             "not an event stream")


def _read_prophesee(path: Path) -> tuple[dict[str, np.ndarray], tuple[int, int] | None, tuple[int, int]]:
    from expelliarmus import Wizard

    header, info = _prophesee_header(path)
    encoding = "dat" if path.suffix.lower() == ".dat" else _raw_encoding(path, info)
    body = path.stat().st_size - header - (2 if encoding == "dat" else 0)
    if header == 0 and encoding == "dat":
        raise RecordingError(f"{path}: no Prophesee DAT header ('%' lines)")
    if body <= 0:
        raise RecordingError(f"{path}: Prophesee {encoding.upper()} file holds a header but no events")
    if body % _WORD_BYTES[encoding]:
        raise RecordingError(
            f"{path}: truncated Prophesee {encoding.upper()} stream "
            f"({body} bytes is not a multiple of {_WORD_BYTES[encoding]})"
        )
    if encoding == "dat":
        _check_dat(path, header)
    try:
        arr = Wizard(encoding=encoding).read(path)
    except Exception as exc:
        raise RecordingError(f"{path}: cannot decode Prophesee {encoding.upper()} ({exc})") from None
    if arr is None:
        raise RecordingError(f"{path}: cannot decode Prophesee {encoding.upper()} (the decoder rejected the stream)")
    columns = {"x": arr["x"], "y": arr["y"], "t": arr["t"], "p": arr["p"]}
    return columns, _prophesee_size(info), _generation_size(info, encoding)


# --------------------------------------------------------------------------- entry point

_Reader = Callable[[Path], tuple[dict[str, np.ndarray], "tuple[int, int] | None"]]
_READERS: dict[str, _Reader] = {
    ".npy": _read_numpy,
    ".npz": _read_numpy,
    ".h5": _read_hdf5,
    ".hdf5": _read_hdf5,
    ".aedat4": _read_aedat4,
    ".aedat": _read_aedat,
}


def read_events(path: str | os.PathLike, sensor_size: tuple[int, ...] | None = None) -> Recording:
    """Read one event recording, choosing the reader from the file suffix and header.

    Args:
        path: a file with one of :data:`RECORDING_SUFFIXES`.
        sensor_size: (W, H[, 2]) to use instead of what the file states or implies.

    Returns:
        Recording(events [N] EVENT_DTYPE sorted by t in µs with p in {0, 1}, sensor_size (W, H, 2)).

    Raises:
        RecordingError: ``"<path>: <cause>"`` when the file is missing, empty, truncated,
        malformed, holds no events or events outside the sensor, or is of an unknown kind.
    """
    path = Path(path)
    if path.is_dir():
        raise RecordingError(f"{path}: is a folder, not a recording")
    if not path.is_file():
        raise RecordingError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise RecordingError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    typical: tuple[int, int] | None = None
    try:
        if suffix in (".dat", ".raw"):
            fields, stated, typical = _read_prophesee(path)
        elif suffix in _READERS:
            fields, stated = _READERS[suffix](path)
        else:
            raise RecordingError(
                f"{path}: unknown recording format {suffix or '(no suffix)'}; known: {', '.join(RECORDING_SUFFIXES)}"
            )
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if sensor_size is not None:
        stated = (int(sensor_size[0]), int(sensor_size[1]))
    return _normalise(path, fields, stated, typical)


def write_npz(
    path: str | os.PathLike, events: np.ndarray, sensor_size: tuple[int, ...], compress: bool = False
) -> Path:
    """Write events [N] (fields x, y, t µs, p) and sensor_size (W, H, 2) to ``path`` atomically.

    The file holds ``events`` (EVENT_DTYPE) and ``sensor_size`` (int64 [3]) and reads back
    through :func:`read_events`; ``compress`` deflates it (about 2.5× smaller for DVS
    events). Temporary file in the same folder, fsync, then rename.
    """
    path = Path(path)
    events = np.asarray(events)
    if events.dtype != EVENT_DTYPE:
        converted = np.empty(len(events), dtype=EVENT_DTYPE)
        for f in ("x", "y", "t", "p"):
            converted[f] = events[f]
        events = converted
    size = np.asarray(tuple(sensor_size)[:2] + (2,), dtype=np.int64)
    with atomic_open(path, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, events=events, sensor_size=size)
    return path
