"""The frame cache: contents, reuse, invalidation, SIGKILL-and-resume, corrupt files, bad recordings."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import dvsguard.data.cache as cache_module
from dvsguard.data.cache import (
    FORMAT_VERSION,
    build_cache,
    cache_paths,
    open_cache,
    split_path,
    verify_cache,
)
from dvsguard.data.events import EVENT_DTYPE, read_events, write_npz
from dvsguard.data.frames import FramingConfig, events_to_frames
from dvsguard.errors import CacheError

CFG = FramingConfig(n_frames=4, height=16, width=16, count_cap=15)
CLASSES = ["a", "b", "c"]


def make_recordings(root: Path, per_class: int = 4, n_events: int = 600, seed: int = 0) -> list[tuple[Path, int]]:
    """Small .npz recordings (32x32 sensor) in class folders; returns (path, label) sorted."""
    rng = np.random.default_rng(seed)
    items = []
    for label, name in enumerate(CLASSES):
        for k in range(per_class):
            n = int(rng.integers(n_events // 2, n_events))
            ev = np.empty(n, dtype=EVENT_DTYPE)
            ev["x"] = rng.integers(0, 32, n)
            ev["y"] = rng.integers(0, 32, n)
            ev["t"] = np.sort(rng.integers(0, 100_000, n))
            ev["p"] = rng.integers(0, 2, n)
            items.append((write_npz(root / name / f"{name}_{k:03d}.npz", ev, (32, 32, 2)), label))
    return items


@pytest.fixture
def items(tmp_path: Path) -> list[tuple[Path, int]]:
    return make_recordings(tmp_path / "rec")


def build(path: Path, items: list[tuple[Path, int]], **kw):  # noqa: ANN202
    kw.setdefault("workers", 1)
    return build_cache(path, items, classes=CLASSES, cfg=CFG, split="train", source="rec", progress=False, **kw)


def read_all(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("frames", "labels", "sources", "crc")}


def test_build_stores_frames_labels_and_attributes(tmp_path: Path, items: list[tuple[Path, int]]) -> None:
    path = tmp_path / "cache" / "rec-train-x.h5"
    result = build(path, items, workers=2, source_root=tmp_path / "rec", siblings={"train": path, "test": "rec-test-x.h5"})
    assert result.n_samples == len(items) == result.n_processed and not result.failed
    info = open_cache(path)
    assert (info.n_samples, info.n_frames, info.height, info.width) == (12, 4, 16, 16)
    assert info.classes == CLASSES and info.count_cap == 15 and info.value_range == (0.0, 1.0)
    assert FramingConfig.from_dict(info.framing) == CFG
    assert split_path(info, "test") == path.parent / "rec-test-x.h5"
    assert split_path(path, "train") == path
    data = read_all(path)
    for i, (rec_path, label) in enumerate(items):
        np.testing.assert_array_equal(data["frames"][i], events_to_frames(read_events(rec_path), CFG))
        assert data["labels"][i] == label
        assert data["sources"][i].decode() == f"{CLASSES[label]}/{rec_path.name}"
    with h5py.File(path, "r") as f:
        assert f["frames"].dtype == np.uint8
        assert f["frames"].chunks == (1, 4, 2, 16, 16)
        assert f["frames"].compression is not None
        assert bool(f.attrs["complete"]) and int(f.attrs["format_version"]) == FORMAT_VERSION
    assert not list(path.parent.glob("*.partial")) and not list(path.parent.glob("*.lock"))
    verify_cache(path)


def test_finished_cache_is_reused_not_rebuilt(tmp_path: Path, items: list[tuple[Path, int]]) -> None:
    path = tmp_path / "c.h5"
    build(path, items)
    mtime = path.stat().st_mtime_ns
    again = build(path, items)
    assert again.reused and again.n_processed == 0 and again.n_samples == len(items)
    assert path.stat().st_mtime_ns == mtime


def test_key_changes_with_config_and_inputs(tmp_path: Path, items: list[tuple[Path, int]]) -> None:
    splits = {"train": items[:10], "test": items[10:]}
    base = cache_paths(tmp_path, "rec", splits, CFG, CLASSES)
    assert base["train"].name.startswith("rec-train-") and base["test"].name.startswith("rec-test-")
    assert base["train"].name[-15:] == base["test"].name[-15:]  # the splits share the key
    assert cache_paths(tmp_path, "rec", splits, CFG, CLASSES) == base
    other_cfgs = [FramingConfig(n_frames=5, height=16, width=16), FramingConfig(n_frames=4, height=16, width=16, count_cap=7),
                  FramingConfig(n_frames=4, mode="time", height=16, width=16)]
    for cfg in other_cfgs:
        assert cache_paths(tmp_path, "rec", splits, cfg, CLASSES)["train"] != base["train"]
    relabelled = {"train": [(p, (y + 1) % 3) for p, y in items[:10]], "test": items[10:]}
    assert cache_paths(tmp_path, "rec", relabelled, CFG, CLASSES)["train"] != base["train"]
    # a recording rewritten (size/mtime change) gives a new key, so a new cache is built
    path0 = items[0][0]
    ev = read_events(path0).events[:50]
    write_npz(path0, ev, (32, 32, 2))
    os.utime(path0, ns=(1, 1))
    assert cache_paths(tmp_path, "rec", splits, CFG, CLASSES)["train"] != base["train"]


def test_cache_of_other_inputs_at_the_path_is_refused(tmp_path: Path, items: list[tuple[Path, int]]) -> None:
    path = tmp_path / "c.h5"
    build(path, items[:6])
    with pytest.raises(CacheError, match="other inputs"):
        build(path, items)


KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from dvsguard.data.cache import build_cache
    from dvsguard.data.frames import FramingConfig
    spec = json.loads(sys.argv[1])
    def slow(index):
        print(index, flush=True)
        time.sleep(0.1)
    build_cache(spec["path"], [(Path(p), y) for p, y in spec["items"]], classes=spec["classes"],
                cfg=FramingConfig.from_dict(spec["cfg"]), split="train", source="rec", workers=2,
                commit_every=1, on_sample=slow, progress=False)
    """
)


def test_sigkilled_build_resumes_and_equals_a_clean_build(tmp_path: Path) -> None:
    items = make_recordings(tmp_path / "rec", per_class=10)
    path = tmp_path / "killed" / "c.h5"
    spec = json.dumps({"path": str(path), "items": [(str(p), y) for p, y in items], "classes": CLASSES, "cfg": CFG.to_dict()})
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, spec], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(180, proc.kill)  # never hang the suite on a stuck child
    watchdog.start()
    try:
        written = [proc.stdout.readline() for _ in range(12)]  # type: ignore[union-attr]
        assert all(line.strip() for line in written), "the build ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    partial = path.with_name(path.name + ".partial")
    assert partial.exists() and not path.exists()
    with pytest.raises(CacheError):
        open_cache(partial)  # never mistaken for a finished cache

    resumed = build(path, items, workers=2)
    assert resumed.n_resumed >= 10
    assert resumed.n_processed == len(items) - resumed.n_resumed < len(items)
    assert not partial.exists()

    clean_path = tmp_path / "clean" / "c.h5"
    clean = build(clean_path, items, workers=1)
    assert clean.n_processed == len(items)
    got, want = read_all(path), read_all(clean_path)
    for key in ("frames", "labels", "crc"):
        assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes(), key
    assert got["sources"].tolist() == want["sources"].tolist()


def test_interrupted_build_with_a_damaged_sample_redoes_it(tmp_path: Path, items: list[tuple[Path, int]]) -> None:
    path = tmp_path / "c.h5"

    def stop_after_8(index: int) -> None:
        if index == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(path, items, commit_every=1, on_sample=stop_after_8)
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "r+") as f:
        assert f["done"][()].tolist() == [1] * 8 + [0] * 4
        f["frames"][2] = np.full(CFG.shape, 3, dtype=np.uint8)  # damage a committed sample
    result = build(path, items)
    assert result.n_resumed == 7 and result.n_processed == len(items) - 7
    clean = tmp_path / "clean.h5"
    build(clean, items)
    assert read_all(path)["frames"].tobytes() == read_all(clean)["frames"].tobytes()


def test_unreadable_partial_file_is_started_afresh(tmp_path: Path, items: list[tuple[Path, int]]) -> None:
    path = tmp_path / "c.h5"
    path.with_name(path.name + ".partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    result = build(path, items)
    assert result.n_resumed == 0 and result.n_samples == len(items)


def interrupted_after_5(path: Path, items: list[tuple[Path, int]]) -> Path:
    """Build ``path`` committing every 2 samples, interrupted at the 5th: the ``.partial`` left behind."""
    seen: list[int] = []

    def stop(i: int) -> None:
        seen.append(i)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(path, items, commit_every=2, on_sample=stop)
    return path.with_name(path.name + ".partial")


def test_partial_file_that_hangs_the_hdf5_reader_is_rebuilt(tmp_path: Path, items: list[tuple[Path, int]],
                                                           caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Zeroed bytes in the global heap that holds the file's strings make HDF5 loop for ever while
    reading the ``key`` attribute: the header is read in a child process, given up after
    PROBE_SECONDS, and the cache is rebuilt instead of the build hanging."""
    path = tmp_path / "c.h5"
    partial = interrupted_after_5(path, items)
    data = bytearray(partial.read_bytes())
    heap = data.index(b"GCOL\x01")  # the global heap collection of the variable-length strings
    data[heap + 16 : heap + 32] = b"\0" * 16
    partial.write_bytes(bytes(data))
    monkeypatch.setattr(cache_module, "PROBE_SECONDS", 10.0)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dvsguard.data.cache"):
        result = build(path, items)
    assert "did not finish within 10 s" in caplog.text and str(partial) in caplog.text
    assert result.n_resumed == 0 and result.n_samples == len(items) and not result.failed
    assert time.monotonic() - t0 < 60
    clean = tmp_path / "clean.h5"
    build(clean, items)
    assert read_all(path)["frames"].tobytes() == read_all(clean)["frames"].tobytes()


def test_partial_file_that_cannot_be_written_is_rebuilt(tmp_path: Path, items: list[tuple[Path, int]],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A partial whose chunk index is damaged (as a full disk leaves it) opens and reads, but every
    chunk write fails with "Can't write unprocessed chunk data": it is rebuilt, with a warning."""
    path = tmp_path / "c.h5"
    partial = interrupted_after_5(path, items)
    data = bytearray(partial.read_bytes())
    chunk_index = data.index(b"TREE\x01")  # the v1 B-tree node of the frames' chunks
    data[chunk_index + 24 : chunk_index + 88] = b"\xff" * 64
    partial.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="dvsguard.data.cache"):
        result = build(path, items)
    assert "interrupted build is damaged" in caplog.text and str(partial) in caplog.text
    assert result.n_resumed == 0 and result.n_samples == len(items) and not result.failed
    clean = tmp_path / "clean.h5"
    build(clean, items)
    assert read_all(path)["frames"].tobytes() == read_all(clean)["frames"].tobytes()


def test_concurrent_build_is_refused(tmp_path: Path, items: list[tuple[Path, int]]) -> None:
    path = tmp_path / "c.h5"
    lock = path.with_name(path.name + ".lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, time; f = open({str(lock)!r}, 'w'); fcntl.lockf(f, fcntl.LOCK_EX); print(1, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"  # type: ignore[union-attr]
        with pytest.raises(CacheError, match="another process"):
            build(path, items)
        assert lock.exists()  # the holder's lock file is left alone
    finally:
        holder.kill()
        holder.wait()
    assert build(path, items).n_samples == len(items)


# ----------------------------------------------------------------------------- corrupt caches


@pytest.fixture
def good_cache(tmp_path: Path, items: list[tuple[Path, int]]) -> Path:
    path = tmp_path / "good.h5"
    build(path, items)
    return path


def test_truncated_cache_is_detected(tmp_path: Path, good_cache: Path) -> None:
    bad = tmp_path / "truncated.h5"
    data = good_cache.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match=r"truncated\.h5: .*(truncated|HDF5)"):
        open_cache(bad)


def test_garbage_and_missing_files_are_detected(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CacheError, match="garbage.h5: not a readable HDF5 file"):
        open_cache(garbage)
    with pytest.raises(CacheError, match="no such cache file"):
        open_cache(tmp_path / "absent.h5")


def test_foreign_hdf5_is_detected(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("frames", data=np.zeros((2, 4, 2, 16, 16), dtype=np.uint8))
    with pytest.raises(CacheError, match="foreign.h5: not a dvsguard frame cache"):
        open_cache(foreign)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.attrs.__setitem__("complete", False), "incomplete"),
        (lambda f: f.attrs.__setitem__("format_version", FORMAT_VERSION + 1), "format version"),
        (lambda f: f.__delitem__("labels"), "'labels' is missing"),
        (lambda f: f.attrs.__delitem__("framing"), "'framing' is missing"),
        (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.zeros(3, np.int64))), "labels has shape"),
        (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.full(12, 9, np.int64))), "labels outside"),
    ],
)
def test_damaged_cache_is_detected(good_cache: Path, damage, message: str) -> None:  # noqa: ANN001
    with h5py.File(good_cache, "r+") as f:
        damage(f)
    with pytest.raises(CacheError, match=message) as err:
        open_cache(good_cache)
    assert str(good_cache) in str(err.value)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.r_[np.zeros(5), np.nan, np.zeros(6)], r"labels are float64 with NaN \(first at sample 5\)"),
        (np.full(12, 0.5), "labels are float64, expected integer class indices 0..2"),
        (np.r_[np.zeros(11, np.int64), -1], r"labels outside 0..2 \(-1 at sample 11\)"),
    ],
)
def test_non_integer_or_nan_labels_are_refused(good_cache: Path, labels: np.ndarray, message: str) -> None:
    from dvsguard.data.dataset import FrameDataset

    with h5py.File(good_cache, "r+") as f:
        del f["labels"]
        f.create_dataset("labels", data=labels)
    for read in (open_cache, FrameDataset):  # what train and attack open
        with pytest.raises(CacheError, match=message) as err:
            read(good_cache)
        assert str(err.value).startswith(f"{good_cache}: ")


def test_damaged_finished_cache_is_not_reused(good_cache: Path, items: list[tuple[Path, int]]) -> None:
    data = good_cache.read_bytes()
    good_cache.write_bytes(data[: len(data) // 3])
    with pytest.raises(CacheError, match="remove it to rebuild"):
        build(good_cache, items)


def test_verify_cache_finds_altered_frames(good_cache: Path) -> None:
    with h5py.File(good_cache, "r+") as f:
        f["frames"][5] = 0
    with pytest.raises(CacheError, match="checksum, first index 5"):
        verify_cache(good_cache)


# ----------------------------------------------------------------------------- bad recordings


def test_bad_recordings_are_reported_once_each_and_skipped(
    tmp_path: Path, items: list[tuple[Path, int]], caplog: pytest.LogCaptureFixture
) -> None:
    rec = tmp_path / "rec"
    empty = rec / "a" / "empty.npz"
    empty.write_bytes(b"")
    garbage = rec / "b" / "garbage.npz"
    garbage.write_bytes(os.urandom(1000))
    wrong = rec / "c" / "wrong_fields.npz"
    np.savez(wrong, events=np.zeros(5, dtype=[("a", "i4"), ("b", "i4")]))
    truncated = rec / "c" / "truncated.npz"
    truncated.write_bytes(items[-1][0].read_bytes()[:300])
    bad = [empty, garbage, wrong, truncated]
    mixed = items[:3] + [(empty, 0), (garbage, 1)] + items[3:] + [(wrong, 2), (truncated, 2)]
    path = tmp_path / "c.h5"
    with caplog.at_level(logging.WARNING, logger="dvsguard.data.cache"):
        result = build(path, mixed, workers=2)
    assert [Path(f) for f, _ in result.failed] == bad
    for (f, cause), p in zip(result.failed, bad):
        assert str(p) in cause and len(cause.splitlines()) == 1
    skipped = [r for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 4
    for p in bad:
        assert sum(str(p) in r.getMessage() for r in skipped) == 1
    info = open_cache(path)
    assert info.n_samples == len(items) and [Path(f) for f, _ in info.failed] == bad
    data = read_all(path)
    np.testing.assert_array_equal(data["labels"], [y for _, y in items])
    np.testing.assert_array_equal(data["frames"][4], events_to_frames(read_events(items[4][0]), CFG))
    verify_cache(path)
    again = build(path, mixed)
    assert again.reused and [Path(f) for f, _ in again.failed] == bad


def test_finished_cache_and_its_folder_are_fsynced(tmp_path: Path, items: list[tuple[Path, int]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.h5"
    real = os.fsync
    seen: list[tuple[str, bool]] = []

    def fsync(fd: int) -> None:
        seen.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", path.exists()))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    build(path, items)
    assert ("file", False) in seen  # the partial file's commits and its final state
    assert seen[-1] == ("dir", True)  # the folder, once the finished file is in place


def test_failed_compaction_keeps_the_partial_file_and_leaves_no_temporary_file(
        tmp_path: Path, items: list[tuple[Path, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    from dvsguard.data import cache

    empty = tmp_path / "rec" / "a" / "empty.npz"
    empty.write_bytes(b"")
    mixed = [*items, (empty, 0)]
    real = cache._frames_dataset

    def frames_dataset(f: h5py.File, n: int, shape: tuple[int, ...], *rest: object) -> h5py.Dataset:
        if ".partial." not in f.filename:  # the compacted copy, not the partial file
            raise OSError("disk full")
        return real(f, n, shape, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "_frames_dataset", frames_dataset)
    path = tmp_path / "c.h5"
    with pytest.raises(OSError, match="disk full"):
        build(path, mixed)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["c.h5.partial"]
    monkeypatch.setattr(cache, "_frames_dataset", real)
    again = build(path, mixed)
    assert again.n_resumed == len(items) and again.n_samples == len(items)
