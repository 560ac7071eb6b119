"""The HDF5 frame cache: one file per (source, split, framing config), built atomically and resumably.

File layout (``<source>-<split>-<key>.h5`` under the ``events`` protocol,
``<source>-<protocol>-<split>-<key>.h5`` under another; ``key`` hashes the framing config,
the format version, the protocol (when not ``events``) and the source listing — paths,
sizes, mtimes, labels of every split — so the splits of one build share it and find each
other by name):

* ``frames``  ``[N, T, 2, H, W]``, one chunk per sample ``(1, T, 2, H, W)``, deflated (gzip
  level 1) by the framing workers and stored as raw chunks, so the single writing process
  does little more than write: uint8 event counts clipped at ``count_cap`` (framing method
  ``downsample``) or float32 raw event counts (``resize``, see
  :func:`dvsguard.data.frames.resize_frames`);
* ``labels``  int64 ``[N]`` class indices into the ``classes`` attribute;
* ``sources`` str ``[N]`` recording paths relative to the source root;
* ``crc``     uint32 ``[N]`` CRC-32 of each sample's frame bytes; ``done`` uint8 ``[N]``;
* ``peak``    float32 ``[N]`` largest frame value of each sample (float frames only);
* attributes: ``format``, ``format_version``, ``complete``, ``split``, ``source``, ``key``,
  ``protocol`` (:mod:`dvsguard.protocol` name; a cache without it is ``events``),
  ``classes``, ``framing`` (JSON of :class:`FramingConfig`), ``count_cap`` (downsample only),
  ``value_range`` (of the float32 frames at the model's door: ``(0, 1)`` for
  ``count / count_cap``; ``(0, max(peak))`` for raw counts, set when the build finishes),
  ``siblings`` (JSON ``{split: file name}``), ``failed`` (JSON ``[[file, cause], ...]``),
  ``sensor_size`` (``[W, H]`` of the recordings' sensor, ``[0, 0]`` when they differ).

A build writes ``<name>.h5.partial``; every ``commit_every`` samples (or 5 s) it records
their CRCs (and peaks), marks them ``done``, flushes and fsyncs. A rerun checks the CRC of every sample
marked done and frames only the rest (a partial file that cannot be read or written back, or whose header
does not read within ``PROBE_SECONDS``, is started afresh), so a
build killed at any moment resumes without trusting half-written data. When every recording is
framed (or failed), the file is marked ``complete``, fsynced and renamed to its final
name (:func:`verify_cache` re-reads every sample against its CRC on demand). Recordings that cannot be read are reported (one line each), skipped and
listed in ``failed``; the finished cache then holds only the good samples.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dvsguard.atomic import atomic_path, fsync_path, replace
from dvsguard.data.frames import VALUE_RANGE, FramingConfig, events_to_frames
from dvsguard.errors import CacheError, DvsguardError
from dvsguard.protocol import DEFAULT_PROTOCOL
from dvsguard.protocol import get as get_protocol

log = logging.getLogger(__name__)

FORMAT = "dvsguard-frame-cache"
FORMAT_VERSION = 1
COMPRESSION = "gzip"  # deflate, compressed by the workers (zlib) and written as raw chunks
GZIP_LEVEL = 1  # decodes about as fast as higher levels; compresses several times faster
PARTIAL_SUFFIX = ".partial"

Item = tuple[Path, int]  # (recording path, class index)


@dataclass(frozen=True)
class CacheInfo:
    """What a validated cache file holds.

    ``value_range`` is that of the float32 model input: ``(0, 1)`` for ``count / count_cap``
    (downsample), ``(0, largest stored value)`` for raw counts (resize, ``count_cap`` None).
    ``protocol`` is the protocol the cache was built under (``events`` for caches from before
    protocols were recorded). ``sensor_size`` is the recordings' sensor ``(W, H)`` in pixels, or
    None when they differ (or the cache predates it); budgets convert to events per sensor pixel
    with it (:mod:`dvsguard.units`).
    """

    path: Path
    split: str
    n_samples: int
    n_frames: int
    height: int
    width: int
    classes: list[str]
    value_range: tuple[float, float]
    count_cap: int | None
    framing: dict[str, Any]
    source: str
    key: str
    siblings: dict[str, Path] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    protocol: str = DEFAULT_PROTOCOL
    sensor_size: tuple[int, int] | None = None


@dataclass
class BuildResult:
    """Outcome of :func:`build_cache`.

    ``n_processed`` recordings were framed in this run; ``n_resumed`` samples were kept
    from an interrupted build; ``reused`` is True when the finished cache already existed.
    """

    path: Path
    n_samples: int
    n_processed: int
    n_resumed: int
    failed: list[tuple[str, str]]
    seconds: float
    reused: bool = False


# ----------------------------------------------------------------------------- naming


def source_listing(items: Sequence[Item]) -> list[list[Any]]:
    """``[[path, size, mtime_ns, label], ...]`` of the recordings (size -1 if missing)."""
    rows = []
    for path, label in items:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        rows.append([os.path.realpath(path), size, mtime, int(label)])
    return rows


def cache_key(splits: dict[str, Sequence[Item]], cfg: FramingConfig, classes: Sequence[str],
              protocol: str = DEFAULT_PROTOCOL) -> str:
    """12 hex digits of SHA-256 over the format version, framing config, classes, listing and
    protocol (left out for ``events``, whose caches keep the keys they had before protocols)."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "framing": cfg.to_dict(),
        "classes": list(classes),
        "splits": {name: source_listing(items) for name, items in sorted(splits.items())},
    }
    if get_protocol(protocol).name != DEFAULT_PROTOCOL:
        payload["protocol"] = protocol
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def cache_paths(cache_dir: str | os.PathLike, source: str, splits: dict[str, Sequence[Item]],
                cfg: FramingConfig, classes: Sequence[str], protocol: str = DEFAULT_PROTOCOL) -> dict[str, Path]:
    """``{split: cache_dir/<source>-<split>-<key>.h5}`` for every split (``<source>-<protocol>-<split>-<key>.h5``
    under a protocol other than ``events``)."""
    key = cache_key(splits, cfg, classes, protocol)
    prefix = source if get_protocol(protocol).name == DEFAULT_PROTOCOL else f"{source}-{protocol}"
    return {name: Path(cache_dir) / f"{prefix}-{name}-{key}.h5" for name in splits}


def split_path(info_or_path: CacheInfo | str | os.PathLike, split: str) -> Path:
    """Path of the sibling cache file of another split (from the ``siblings`` attribute)."""
    info = info_or_path if isinstance(info_or_path, CacheInfo) else open_cache(info_or_path)
    if split not in info.siblings:
        raise CacheError(f"{info.path}: no {split!r} split recorded (has {', '.join(sorted(info.siblings)) or 'none'})")
    return info.siblings[split]


# ----------------------------------------------------------------------------- reading


def _json_attr(f: h5py.File, name: str, path: Path) -> Any:
    try:
        return json.loads(f.attrs[name])
    except KeyError:
        raise CacheError(f"{path}: attribute {name!r} is missing (not a complete dvsguard cache)") from None
    except (TypeError, ValueError) as exc:
        raise CacheError(f"{path}: attribute {name!r} is not valid JSON ({exc})") from None


def _info_from_file(f: h5py.File, path: Path, require_complete: bool = True) -> CacheInfo:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise CacheError(f"{path}: not a dvsguard frame cache (format attribute is {fmt!r})")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise CacheError(f"{path}: cache format version {version}, this dvsguard reads version {FORMAT_VERSION}; rebuild it")
    if require_complete and not bool(f.attrs.get("complete", False)):
        raise CacheError(f"{path}: incomplete cache (its build did not finish)")
    for name in ("frames", "labels", "sources", "crc"):
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise CacheError(f"{path}: dataset {name!r} is missing")
    try:
        cfg = FramingConfig.from_dict(_json_attr(f, "framing", path))
    except DvsguardError as exc:
        raise CacheError(f"{path}: bad framing attribute ({exc})") from None
    protocol = _str_attr(f, "protocol", DEFAULT_PROTOCOL)
    try:
        expected_method = get_protocol(protocol, f"{path}: attribute 'protocol'").framing
    except DvsguardError as exc:
        raise CacheError(str(exc)) from None
    if cfg.method != expected_method:
        raise CacheError(f"{path}: framing method {cfg.method!r} does not belong to protocol {protocol!r} "
                         f"(which frames by {expected_method!r})")
    classes = _json_attr(f, "classes", path)
    frames, labels = f["frames"], f["labels"]
    n = frames.shape[0] if frames.ndim else -1
    if frames.dtype != cfg.dtype or tuple(frames.shape[1:]) != cfg.shape:
        raise CacheError(f"{path}: frames are {frames.dtype} {frames.shape}, "
                         f"expected {cfg.dtype} [N, {', '.join(map(str, cfg.shape))}]")
    counted = ("labels", "sources", "crc") + (("peak",) if cfg.value_range is None else ())
    for name in counted:
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise CacheError(f"{path}: dataset {name!r} is missing")
        if f[name].shape != (n,):
            raise CacheError(f"{path}: {name} has shape {f[name].shape}, frames hold {n} samples")
    if n and require_complete:
        _check_labels(labels[()], len(classes), path)
    if cfg.value_range is None:
        value_range = _raw_value_range(f, path, n)
    else:
        value_range = tuple(float(v) for v in f.attrs.get("value_range", VALUE_RANGE))
    siblings = {k: path.parent / v for k, v in _json_attr(f, "siblings", path).items()}
    failed = [tuple(x) for x in _json_attr(f, "failed", path)] if "failed" in f.attrs else []
    return CacheInfo(
        path=path,
        split=str(f.attrs.get("split", "")),
        n_samples=int(n),
        n_frames=cfg.n_frames,
        height=cfg.height,
        width=cfg.width,
        classes=[str(c) for c in classes],
        value_range=value_range,  # type: ignore[arg-type]
        count_cap=cfg.count_cap,
        framing=cfg.to_dict(),
        source=str(f.attrs.get("source", "")),
        key=str(f.attrs.get("key", "")),
        siblings=siblings,
        failed=failed,  # type: ignore[arg-type]
        protocol=protocol,
        sensor_size=_sensor_attr(f),
    )


def _sensor_attr(f: h5py.File) -> tuple[int, int] | None:
    """The recordings' common sensor size ``(W, H)``, or None (not recorded, or recordings of several sizes)."""
    have = f.attrs.get("sensor_size")
    try:
        w, h = (int(v) for v in have)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _str_attr(f: h5py.File, name: str, default: str) -> str:
    value = f.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _raw_value_range(f: h5py.File, path: Path, n: int) -> tuple[float, float]:
    """``value_range`` of a raw-count cache, checked against its per-sample ``peak``: finite and
    ``(0, max(peak))``; a NaN, infinite or negative peak is refused."""
    peak = f["peak"][()].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(peak) | (peak < 0))
    if len(bad):
        raise CacheError(f"{path}: frames hold NaN, infinite or negative values (peak {peak[bad[0]]} "
                         f"at sample {int(bad[0])})")
    stored = f.attrs.get("value_range")
    if stored is None or np.shape(stored) != (2,):
        raise CacheError(f"{path}: attribute 'value_range' is {stored!r}, expected [0, largest frame value]")
    lo, hi = (float(v) for v in stored)
    want = float(peak.max()) if n else 0.0
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo != 0.0 or hi != want:
        raise CacheError(f"{path}: attribute 'value_range' is [{lo}, {hi}], but the frames span [0, {want}]")
    return (lo, hi)


def _check_labels(lab: np.ndarray, n_classes: int, path: Path) -> None:
    """Refuse labels that are not integer class indices 0..n_classes-1 (NaN, fractions, other types)."""
    span = f"0..{n_classes - 1}"
    if lab.dtype.kind not in "iu":
        if lab.dtype.kind == "f" and np.isnan(lab).any():
            first = int(np.flatnonzero(np.isnan(lab))[0])
            raise CacheError(f"{path}: labels are {lab.dtype} with NaN (first at sample {first}), "
                             f"expected integer class indices {span}")
        raise CacheError(f"{path}: labels are {lab.dtype}, expected integer class indices {span}")
    bad = np.flatnonzero((lab < 0) | (lab >= n_classes))
    if len(bad):
        raise CacheError(f"{path}: labels outside {span} ({lab[bad[0]]} at sample {int(bad[0])})")


def _open_h5(path: Path, mode: str = "r") -> h5py.File:
    """Open an HDF5 file, turning a truncated/foreign/missing file into a CacheError."""
    if not path.exists():
        raise CacheError(f"{path}: no such cache file")
    if not path.is_file():
        raise CacheError(f"{path}: not a file")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        cause = " ".join(str(exc).split())
        raise CacheError(f"{path}: not a readable HDF5 file, truncated or foreign ({cause})") from None


def open_cache(path: str | os.PathLike) -> CacheInfo:
    """Validate a finished cache file and describe it; ``CacheError`` naming the file and cause otherwise."""
    path = Path(path)
    f = _open_h5(path)
    try:
        return _info_from_file(f, path)
    except CacheError:
        raise
    except Exception as exc:  # h5py raises KeyError/OSError/ValueError on damaged files
        raise CacheError(f"{path}: damaged cache file ({type(exc).__name__}: {exc})") from None
    finally:
        f.close()


def verify_cache(path: str | os.PathLike) -> CacheInfo:
    """Read every sample and check its CRC-32; ``CacheError`` naming the first bad sample."""
    path = Path(path)
    info = open_cache(path)
    with _open_h5(path) as f:
        bad = _bad_samples(f, np.arange(info.n_samples))
    if bad:
        check = "checksum" if info.count_cap is not None else "checksum or value check"
        raise CacheError(f"{path}: {len(bad)} sample(s) fail their {check}, first index {bad[0]}")
    return info


def _bad_samples(f: h5py.File, indices: np.ndarray) -> list[int]:
    """Indices whose stored frames are unreadable or do not match their CRC-32 (float frames: or
    hold values that are not finite, negative, or above the sample's recorded ``peak``)."""
    frames, crcs = f["frames"], f["crc"][()]
    peaks = f["peak"][()] if frames.dtype.kind == "f" else None
    bad = []
    for i in indices:
        try:
            sample = frames[int(i)]
            ok = zlib.crc32(sample.tobytes()) == int(crcs[i])
            if ok and peaks is not None:
                ok = bool(np.isfinite(sample).all()) and float(sample.min()) >= 0 and float(sample.max()) == peaks[i]
        except Exception:  # unreadable chunk
            ok = False
        if not ok:
            bad.append(int(i))
    return bad


# ----------------------------------------------------------------------------- building


def _frame_job(job: tuple[int, str, FramingConfig, str | None]) -> tuple[int, bytes, int, float, tuple[int, int], str]:
    """Worker: read + frame one recording → (index, HDF5 chunk bytes, CRC-32 of the frames,
    largest frame value, sensor size ``(W, H)`` in pixels, error).

    The chunk is the ``[1, T, 2, H, W]`` frames (``cfg.dtype``), deflated when ``compression``
    is gzip, so the writing process only stores it.
    """
    index, path, cfg, compression = job
    from dvsguard.data.events import read_events

    try:
        recording = read_events(path)
        frames = events_to_frames(recording, cfg)
    except DvsguardError as exc:
        msg = str(exc)
        return index, b"", 0, 0.0, (0, 0), msg if path in msg else f"{path}: {msg}"
    except Exception as exc:  # a reader bug must not stop the other recordings
        return index, b"", 0, 0.0, (0, 0), f"{path}: {type(exc).__name__}: {exc}"
    raw = np.ascontiguousarray(frames, dtype=cfg.dtype).tobytes()
    chunk = zlib.compress(raw, GZIP_LEVEL) if compression == "gzip" else raw
    sensor = (int(recording.sensor_size[0]), int(recording.sensor_size[1]))
    return index, chunk, zlib.crc32(raw), float(frames.max()), sensor, ""


def _frames_dataset(f: h5py.File, n: int, shape: tuple[int, ...], dtype: np.dtype,
                    compression: str | None) -> h5py.Dataset:
    if compression not in ("gzip", None):
        raise CacheError(f"{f.filename}: compression must be 'gzip' or None, not {compression!r}")
    if n == 0:
        return f.create_dataset("frames", shape=(0, *shape), dtype=dtype)
    return f.create_dataset("frames", shape=(n, *shape), dtype=dtype, chunks=(1, *shape),
                            compression=compression, compression_opts=GZIP_LEVEL if compression else None)


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(Path(os.path.realpath(path)).relative_to(os.path.realpath(root)))
        except ValueError:
            pass
    return str(path)


def _create_partial(partial: Path, n: int, cfg: FramingConfig, attrs: dict[str, Any],
                    labels: np.ndarray, sources: list[str], compression: str | None) -> None:
    with atomic_path(partial) as tmp, h5py.File(tmp, "w") as f:
        _frames_dataset(f, n, cfg.shape, cfg.dtype, compression)
        f.create_dataset("labels", data=labels.astype(np.int64))
        f.create_dataset("sources", data=np.array(sources, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("crc", shape=(n,), dtype=np.uint32)
        f.create_dataset("done", shape=(n,), dtype=np.uint8)
        if cfg.value_range is None:
            f.create_dataset("peak", shape=(n,), dtype=np.float32)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["complete"] = False


def _probe_writes(f: h5py.File, done: np.ndarray) -> None:
    """Write to ``f`` what the build will write, so a partial file that reads but cannot be
    written (a full disk's damage, a read-only file) fails here rather than mid-build: the
    ``done`` flags as they are and, at the first sample not done, an all-zero chunk."""
    f["done"][...] = done.astype(np.uint8)
    todo = np.flatnonzero(~done)
    if len(todo):
        frames = f["frames"]
        zeros = np.zeros(frames.chunks, dtype=frames.dtype).tobytes()
        chunk = zlib.compress(zeros, GZIP_LEVEL) if frames.compression == "gzip" else zeros
        frames.id.write_direct_chunk((int(todo[0]), *(0,) * (frames.ndim - 1)), chunk)
    f.flush()


PROBE_SECONDS = 60.0
"""How long reading a partial file's header may take before it counts as damaged: zeroed bytes
in an HDF5 header can make the HDF5 library loop for ever while reading an attribute."""


def _read_header(partial: Path, key: str, n: int) -> tuple[str, Any]:
    """("other", None) for a partial of other inputs, ("ok", done [N] bool) for one of these
    inputs, ("damaged", cause) when it cannot be read."""
    try:
        with h5py.File(partial, "r") as f:
            if f.attrs.get("key") != key or f["frames"].shape[0] != n:
                return "other", None
            return "ok", f["done"][()].astype(bool)
    except Exception as exc:
        return "damaged", " ".join(str(exc).split())


def _read_header_child(conn: Any, partial: Path, key: str, n: int) -> None:
    conn.send(_read_header(partial, key, n))
    conn.close()


def _read_header_bounded(partial: Path, key: str, n: int, seconds: float) -> tuple[str, Any]:
    """:func:`_read_header` in a child process, given up as damaged after ``seconds``."""
    ctx = _pool_context()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_read_header_child, args=(send, partial, key, n), daemon=True)
    child.start()
    send.close()
    try:
        if receive.poll(seconds):
            return receive.recv()
    except EOFError:
        return "damaged", f"its reader stopped (exit code {child.exitcode})"
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    return "damaged", f"reading its header did not finish within {seconds:g} s"


def _resume_state(partial: Path, key: str, n: int) -> np.ndarray | None:
    """Done mask of a usable partial file (bad samples cleared), or None to start afresh.

    Usable means: built from the same inputs, readable, and writable (:func:`_probe_writes`). Its
    header is read first in a child process, so a file that makes the HDF5 library hang costs
    :data:`PROBE_SECONDS` instead of the build. A damaged partial file is logged as a warning and
    rebuilt from scratch.
    """
    if not partial.exists():
        return None
    state, value = _read_header_bounded(partial, key, n, PROBE_SECONDS)
    if state == "other":
        log.info("%s: left by a build with other inputs; starting afresh", partial)
        return None
    try:
        if state == "damaged":
            raise CacheError(value)
        done = value
        with h5py.File(partial, "r+") as f:
            bad = _bad_samples(f, np.flatnonzero(done))
            _probe_writes(f, done)
    except Exception as exc:
        log.warning("%s: interrupted build is damaged (%s); starting afresh", partial, " ".join(str(exc).split()))
        return None
    if bad:
        log.warning("%s: %d sample(s) of the interrupted build fail their checksum; framing them again", partial, len(bad))
        done[bad] = False
    return done


def _pool_context() -> mp.context.BaseContext:
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _worker_init() -> None:
    """Workers leave Ctrl-C to the parent and die with it (Linux) instead of framing on as orphans."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:  # the parent already died before prctl
                os._exit(1)
        except (OSError, AttributeError):
            pass


def build_cache(
    path: str | os.PathLike,
    items: Sequence[Item],
    *,
    classes: Sequence[str],
    cfg: FramingConfig,
    split: str,
    source: str = "",
    protocol: str = DEFAULT_PROTOCOL,
    siblings: dict[str, str | os.PathLike] | None = None,
    source_root: str | os.PathLike | None = None,
    key: str | None = None,
    workers: int = 2,
    commit_every: int = 128,
    compression: str | None = COMPRESSION,
    on_sample: Callable[[int], None] | None = None,
    progress: bool = True,
) -> BuildResult:
    """Frame ``items`` (recording path, class index) into the cache file ``path``.

    Reading and framing run in ``workers`` processes (1 = in this process); this process
    writes. A finished cache at ``path`` is validated and reused; a ``.partial`` file left by
    an interrupted build with the same ``key`` is resumed. ``on_sample(i)`` is called after
    sample ``i`` is written. Recordings that fail are logged one line each and returned in
    ``failed``. ``protocol`` (recorded in the file) must frame as ``cfg`` does.
    """
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [(Path(p), int(y)) for p, y in items]
    if get_protocol(protocol).framing != cfg.method:
        raise CacheError(f"{path}: protocol {protocol!r} frames by {get_protocol(protocol).framing!r}, "
                         f"not by {cfg.method!r}")
    key = key or cache_key({split: items}, cfg, classes, protocol)
    siblings = {k: Path(v).name for k, v in (siblings or {split: path}).items()}
    siblings.setdefault(split, path.name)
    if path.exists():
        return _reuse(path, key, start)

    lock_path = path.with_name(path.name + ".lock")
    lock = open(lock_path, "w")
    locked = False
    try:
        try:
            # a POSIX record lock: released when this process dies, and not inherited by the workers
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError:
            raise CacheError(f"{path}: another process is building this cache (lock {lock_path} is held)") from None
        if path.exists():  # finished by another process meanwhile
            return _reuse(path, key, start)
        return _build_locked(path, items, classes, cfg, split, source, protocol, siblings, source_root, key,
                             workers, commit_every, compression, on_sample, progress, start)
    finally:
        if locked:
            lock_path.unlink(missing_ok=True)
        lock.close()


def _reuse(path: Path, key: str, start: float) -> BuildResult:
    """The finished cache at ``path``, checked to be valid and built from the same inputs."""
    try:
        info = open_cache(path)
    except CacheError as exc:
        raise CacheError(f"{exc}; remove it to rebuild") from None
    if info.key != key:
        raise CacheError(f"{path}: holds a cache of other inputs (key {info.key}, expected {key}); remove it")
    return BuildResult(path, info.n_samples, 0, 0, list(info.failed), time.perf_counter() - start, reused=True)


def _build_locked(path: Path, items: list[Item], classes: Sequence[str], cfg: FramingConfig, split: str,
                  source: str, protocol: str, siblings: dict[str, str], source_root: str | os.PathLike | None, key: str,
                  workers: int, commit_every: int, compression: str | None,
                  on_sample: Callable[[int], None] | None, progress: bool, start: float) -> BuildResult:
    """:func:`build_cache` with the build lock held and no finished cache at ``path``."""
    n = len(items)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    root = Path(source_root) if source_root is not None else None
    attrs = _cache_attrs(classes, cfg, split, source, protocol, siblings, root, key)
    done = _resume_state(partial, key, n)
    if done is None:
        labels = np.array([y for _, y in items], dtype=np.int64)
        _create_partial(partial, n, cfg, attrs, labels, [_relative(p, root) for p, _ in items], compression)
        done = np.zeros(n, dtype=bool)
    n_resumed = int(done.sum())
    if n_resumed:
        log.info("%s: resuming an interrupted build, %d of %d samples already framed", path.name, n_resumed, n)
    todo = [i for i in range(n) if not done[i]]
    jobs = [(i, str(items[i][0]), cfg, compression) for i in todo]
    errors = _frame_into(partial, jobs, done, workers, commit_every, on_sample,
                         label=f"framing {split}", progress=progress)
    failed = [(str(items[i][0]), errors[i]) for i in sorted(errors)]
    _finish(partial, path, done, compression, failed)
    info = open_cache(path)
    seconds = time.perf_counter() - start
    log.info("%s: %d samples (%d framed now, %d resumed, %d failed) in %.1f s",
             path.name, info.n_samples, len(todo) - len(failed), n_resumed, len(failed), seconds)
    return BuildResult(path, info.n_samples, len(jobs), n_resumed, failed, seconds)


def _cache_attrs(classes: Sequence[str], cfg: FramingConfig, split: str, source: str, protocol: str,
                 siblings: dict[str, str], root: Path | None, key: str) -> dict[str, Any]:
    """The file attributes a build starts with (``complete`` and ``failed`` come at the end, and
    so does the ``value_range`` of raw-count frames)."""
    attrs: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "split": split,
        "source": source,
        "key": key,
        "protocol": protocol,
        "classes": json.dumps(list(classes)),
        "framing": json.dumps(cfg.to_dict()),
        "siblings": json.dumps(siblings, sort_keys=True),
        "source_root": str(root.resolve()) if root is not None else "",
    }
    if cfg.value_range is not None:
        attrs["count_cap"] = cfg.count_cap
        attrs["value_range"] = np.array(cfg.value_range, dtype=np.float64)
    return attrs


def _frame_into(partial: Path, jobs: list[tuple[int, str, FramingConfig, str | None]], done: np.ndarray,
                workers: int, commit_every: int, on_sample: Callable[[int], None] | None,
                *, label: str, progress: bool) -> dict[int, str]:
    """Frame ``jobs`` in ``workers`` processes (in this one when 1, or for a single job) and
    write them into ``partial``, marking them in ``done`` ``[N]`` as they are committed.
    Returns ``{index: cause}`` of the recordings that failed."""
    # import the readers and tonic here once, so forked workers start with them loaded
    import tonic.slicers  # noqa: F401
    import tonic.transforms  # noqa: F401

    import dvsguard.data.events  # noqa: F401

    pool = _pool_context().Pool(workers, initializer=_worker_init) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.imap_unordered(_frame_job, jobs, chunksize=1) if pool else map(_frame_job, jobs)
        return _write_results(partial, results, done, commit_every, on_sample, label=label, progress=progress)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _write_results(partial: Path, results: Iterable[tuple[int, bytes, int, float, tuple[int, int], str]],
                   done: np.ndarray,
                   commit_every: int, on_sample: Callable[[int], None] | None,
                   *, label: str, progress: bool) -> dict[int, str]:
    """Store the framed chunks of ``results`` (from :func:`_frame_job`) in ``partial``, committing
    every ``commit_every`` samples or 5 s and at the end. Returns ``{index: cause}`` of the failed."""
    from dvsguard.progress import make_progress

    errors: dict[int, str] = {}
    n = len(done)
    with h5py.File(partial, "r+") as f, make_progress() as bar:
        task = bar.add_task(label, total=n, completed=int(done.sum()), visible=progress)
        frames_ds = f["frames"]
        peak_ds = f["peak"] if "peak" in f else None
        pending: dict[int, tuple[int, float]] = {}  # index -> (crc, peak) of samples written since the last commit
        last_commit = time.monotonic()

        def commit() -> None:
            # one flush + fsync: a sample marked done whose frames did not reach the disk
            # fails its CRC on resume and is framed again, so no write ordering is needed
            if pending:
                idx = np.array(sorted(pending))
                f["crc"][idx] = np.array([pending[i][0] for i in idx], dtype=np.uint32)
                if peak_ds is not None:
                    peak_ds[idx] = np.array([pending[i][1] for i in idx], dtype=np.float32)
                f["done"][idx] = 1
                f.flush()
                fsync_path(partial)
                done[idx] = True
                pending.clear()

        shape_tail = (0,) * (frames_ds.ndim - 1)
        for index, chunk, crc, peak, sensor, error in results:
            if error:
                errors[index] = error
                log.warning("skipped %s", error)
            else:
                _note_sensor(f, sensor)
                frames_ds.id.write_direct_chunk((index, *shape_tail), chunk)
                pending[index] = (crc, peak)
            bar.advance(task)
            if len(pending) >= commit_every or time.monotonic() - last_commit > 5.0:
                commit()
                last_commit = time.monotonic()
            if on_sample is not None:
                on_sample(index)
        commit()
    return errors


def _note_sensor(f: h5py.File, sensor: tuple[int, int]) -> None:
    """Record the recordings' sensor size ``(W, H)`` in attribute ``sensor_size``; ``(0, 0)`` once two differ."""
    have = f.attrs.get("sensor_size")
    if have is None:
        f.attrs["sensor_size"] = np.array(sensor, dtype=np.int64)
    elif tuple(int(v) for v in have) not in ((0, 0), sensor):
        f.attrs["sensor_size"] = np.array((0, 0), dtype=np.int64)


def _finish(partial: Path, path: Path, done: np.ndarray, compression: str | None,
            failed: list[tuple[str, str]]) -> None:
    """Turn the framed ``partial`` into the finished cache at ``path``: marked complete and
    renamed, or, when recordings ``failed``, its good samples compacted into ``path``."""
    n = len(done)
    good = np.flatnonzero(done)
    if len(good) + len(failed) != n:  # pragma: no cover - defensive
        raise CacheError(f"{partial}: {n - len(good) - len(failed)} samples neither framed nor failed")
    if failed:
        _compact(partial, path, good, compression, failed)
        partial.unlink()
        fsync_path(path.parent)
    else:
        with h5py.File(partial, "r+") as f:
            _set_raw_value_range(f)
            f.attrs["failed"] = "[]"
            f.attrs["complete"] = True
        replace(partial, path)


def _set_raw_value_range(f: h5py.File) -> None:
    """Raw-count frames (a ``peak`` dataset): ``value_range`` = ``[0, largest peak]`` (``[0, 0]`` when empty)."""
    if "peak" in f:
        peak = f["peak"][()]
        f.attrs["value_range"] = np.array([0.0, float(peak.max()) if len(peak) else 0.0], dtype=np.float64)


def _compact(partial: Path, path: Path, good: np.ndarray, compression: str | None,
             failed: list[tuple[str, str]]) -> None:
    """Write only the good samples of ``partial`` into ``path`` (atomically), chunks copied as stored."""
    with h5py.File(partial, "r") as src, atomic_path(path) as tmp, h5py.File(tmp, "w") as dst:
        m = len(good)
        src_frames = src["frames"]
        frames = _frames_dataset(dst, m, src_frames.shape[1:], src_frames.dtype, compression)
        tail = (0,) * (src_frames.ndim - 1)
        for j, i in enumerate(good):
            mask, chunk = src_frames.id.read_direct_chunk((int(i), *tail))
            frames.id.write_direct_chunk((j, *tail), chunk, mask)
        dst.create_dataset("labels", data=src["labels"][()][good])
        dst.create_dataset("sources", data=src["sources"][()][good], dtype=h5py.string_dtype())
        dst.create_dataset("crc", data=src["crc"][()][good])
        dst.create_dataset("done", data=np.ones(m, dtype=np.uint8))
        if "peak" in src:
            dst.create_dataset("peak", data=src["peak"][()][good])
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        _set_raw_value_range(dst)
        dst.attrs["failed"] = json.dumps(failed)
        dst.attrs["complete"] = True
