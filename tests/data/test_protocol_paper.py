"""The data side of the ``paper`` protocol: SpikingJelly frames resized bilinearly (raw counts), the
authors' seeded random_split, and raw-count caches beside events caches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import random_split

from dvsguard.data.aedat2 import write_aedat2_dvs128
from dvsguard.data.cache import build_cache, open_cache, verify_cache
from dvsguard.data.cifar10dvs import CIFAR10DVS_CLASSES, random_split_train_test
from dvsguard.data.events import EVENT_DTYPE, Recording, read_events
from dvsguard.data.frames import FramingConfig, events_to_frames, frames_to_float
from dvsguard.errors import CacheError, ConfigError

PAPER = FramingConfig(n_frames=4, height=16, width=16, method="resize")


def _events(n: int, seed: int = 0, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"] = rng.integers(0, size, n), rng.integers(0, size, n)
    ev["t"] = np.cumsum(rng.integers(1, 100, n))
    ev["p"] = rng.integers(0, 2, n)
    return ev


def spikingjelly_number_frames(ev: np.ndarray, frames: int, h: int, w: int) -> np.ndarray:
    """SpikingJelly's split_by='number' rule, event by event: d = N // T, frame j < T-1 takes the
    events [j·d, (j+1)·d), the last frame [(T-1)·d, N); channel 0 counts p == 0, channel 1 the rest."""
    n = len(ev)
    d = n // frames
    out = np.zeros((frames, 2, h, w))
    for j in range(frames):
        lo, hi = j * d, (j + 1) * d if j < frames - 1 else n
        for k in range(lo, hi):
            out[j, 0 if ev["p"][k] == 0 else 1, ev["y"][k], ev["x"][k]] += 1
    return out


def reference(ev: np.ndarray, frames: int, size: int, sensor: int = 128) -> np.ndarray:
    counts = torch.from_numpy(spikingjelly_number_frames(ev, frames, sensor, sensor).astype(np.float32))
    return F.interpolate(counts, size=(size, size), mode="bilinear", align_corners=False, antialias=False).numpy()


@pytest.mark.parametrize("n", [1003, 40, 7, 1])  # not divisible by T; fewer events than frames
def test_resize_framing_equals_spikingjelly_then_torchvision_resize(n: int) -> None:
    ev = _events(n, seed=n)
    cfg = FramingConfig(n_frames=10, height=48, width=48, method="resize")
    got = events_to_frames(Recording(ev, (128, 128, 2)), cfg)
    assert got.dtype == np.float32 and got.shape == (10, 2, 48, 48)
    np.testing.assert_allclose(got, reference(ev, 10, 48), rtol=0, atol=1e-6)
    if n < 10:
        assert not got[:-1].any()  # all events in the last frame, as SpikingJelly does


def test_resize_framing_keeps_the_remainder_in_the_last_frame_and_spikingjellys_channels() -> None:
    ev = np.zeros(13, dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"] = 5, 9, np.arange(13)
    ev["p"][-1] = 1  # the 13th event: the remainder of 13 // 4, an ON event
    at_sensor = events_to_frames(Recording(ev, (128, 128, 2)), FramingConfig(n_frames=4, height=128, width=128,
                                                                             method="resize"))
    assert at_sensor[:, :, 9, 5].tolist() == [[3, 0], [3, 0], [3, 0], [3, 1]]  # [T, channel]
    assert at_sensor.sum() == 13


def test_resize_frames_are_the_model_input_unscaled() -> None:
    frames = events_to_frames(Recording(_events(500), (128, 128, 2)), PAPER)
    x = frames_to_float(frames, PAPER.count_cap)
    assert x.dtype == np.float32 and np.array_equal(x, frames)
    assert PAPER.input_scale == 1.0 and PAPER.value_range is None
    assert events_to_frames(Recording(_events(0), (128, 128, 2)), PAPER).dtype == np.float32
    with pytest.raises(ConfigError, match="count_cap"):
        frames_to_float(frames, 15)
    with pytest.raises(ConfigError, match="need a count_cap"):
        frames_to_float(frames.astype(np.uint8), None)


def test_framing_method_is_recorded_and_old_dicts_load_as_downsample() -> None:
    assert FramingConfig.from_dict(PAPER.to_dict()) == PAPER
    assert PAPER.to_dict()["method"] == "resize" and PAPER.to_dict()["count_cap"] is None
    old = {"n_frames": 4, "mode": "events", "height": 16, "width": 16, "count_cap": 15}
    assert FramingConfig.from_dict(old).method == "downsample"
    assert FramingConfig(n_frames=4, height=16, width=16).to_dict() == old  # unchanged, so are the cache keys
    with pytest.raises(ConfigError, match="count_cap applies to downsample"):
        FramingConfig(method="resize", count_cap=15)
    with pytest.raises(ConfigError, match="mode must be 'events'"):
        FramingConfig(method="resize", mode="time")
    with pytest.raises(ConfigError, match="method must be one of"):
        FramingConfig(method="nearest")


def test_split_is_random_split_over_spikingjellys_listing_order() -> None:
    # SpikingJelly lists like torchvision's DatasetFolder: classes sorted, files in plain sorted order
    items = [(Path(f"/d/{c}/cifar10_{c}_{i}.aedat"), label) for label, c in enumerate(CIFAR10DVS_CLASSES)
             for i in range(1000)]
    listing = sorted(items, key=lambda it: (CIFAR10DVS_CLASSES[it[1]], it[0].name))
    assert listing[1][0].name == "cifar10_airplane_1.aedat" and listing[2][0].name == "cifar10_airplane_10.aedat"
    shuffled = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    got = random_split_train_test(shuffled, list(CIFAR10DVS_CLASSES))
    train, test = random_split(range(10000), [9000, 1000], generator=torch.Generator().manual_seed(42))
    assert got["train"] == [listing[i] for i in train.indices]
    assert got["test"] == [listing[i] for i in test.indices]
    fractions = random_split(range(10000), [0.9, 0.1], generator=torch.Generator().manual_seed(42))
    assert [s.indices for s in fractions] == [train.indices, test.indices]


def test_split_of_a_small_listing_uses_the_fractions() -> None:
    items = [(Path(f"/d/{c}/{i}.npz"), label) for label, c in enumerate("ab") for i in range(10)]
    got = random_split_train_test(items, ["a", "b"])
    assert (len(got["train"]), len(got["test"])) == (18, 2)
    assert sorted(got["train"] + got["test"]) == sorted(items)


def make_cifar10dvs(root: Path, per_class: int = 2) -> None:
    """The AEDAT 2.0 release layout, <class>/cifar10_<class>_<n>.aedat, small recordings."""
    for label, name in enumerate(CIFAR10DVS_CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            write_aedat2_dvs128(root / name / f"cifar10_{name}_{i}.aedat", _events(300 + 7 * i, seed=10 * label + i))


def run_preprocess(root: Path, cache: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", "from dvsguard.cli import main; main()", "preprocess", "cifar10dvs", "--root", str(root),
         "--cache-dir", str(cache), "--frames", "4", "--size", "16", "--workers", "2", "--json", *extra],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_paper_cache_beside_an_events_cache(tmp_path: Path) -> None:
    root, cache = tmp_path / "cifar", tmp_path / "cache"
    make_cifar10dvs(root)
    paper = run_preprocess(root, cache, "--protocol", "paper")
    events = run_preprocess(root, cache)
    assert paper["protocol"] == "paper" and events["protocol"] == "events"
    assert (paper["n_train"], paper["n_test"]) == (18, 2)
    assert len({paper["train"], paper["test"], events["train"], events["test"]}) == 4
    assert Path(paper["train"]).name.startswith("cifar10dvs-paper-train-")
    assert Path(events["train"]).name.startswith("cifar10dvs-train-")

    items = [(root / c / f"cifar10_{c}_{i}.aedat", label) for label, c in enumerate(CIFAR10DVS_CLASSES)
             for i in range(2)]
    want = random_split_train_test(items, list(CIFAR10DVS_CLASSES))
    for split in ("train", "test"):
        info = verify_cache(paper[split])
        assert info.protocol == "paper" and info.count_cap is None
        assert FramingConfig.from_dict(info.framing) == PAPER
        with h5py.File(paper[split], "r") as f:
            frames, sources = f["frames"][()], [s.decode() for s in f["sources"][()]]
            assert f["frames"].dtype == np.float32 and f.attrs["protocol"] == "paper"
        assert sources == [f"{p.parent.name}/{p.name}" for p, _ in want[split]]
        for k, (path, _) in enumerate(want[split]):
            np.testing.assert_array_equal(frames[k], events_to_frames(read_events(path), PAPER))
        assert info.value_range == (0.0, float(frames.max())) and frames.max() > 0
        json.dumps(info.value_range)
        events_info = open_cache(events[split])
        assert events_info.protocol == "events" and events_info.value_range == (0.0, 1.0)
        assert events_info.count_cap == 15


def _contents(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f[k][()].tobytes() for k in ("frames", "labels", "crc", "peak", "done")}
        out["attrs"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return out


def test_resumed_paper_cache_equals_a_clean_build(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    make_cifar10dvs(root, per_class=1)
    items = [(root / c / f"cifar10_{c}_0.aedat", label) for label, c in enumerate(CIFAR10DVS_CLASSES)]
    kw = dict(classes=list(CIFAR10DVS_CLASSES), cfg=PAPER, split="train", source="cifar10dvs", protocol="paper",
              workers=1, progress=False, source_root=root)

    def stop_after_6(index: int) -> None:
        if index == 5:  # after sample 5 is committed
            raise KeyboardInterrupt

    path = tmp_path / "a" / "c.h5"
    with pytest.raises(KeyboardInterrupt):
        build_cache(path, items, commit_every=1, on_sample=stop_after_6, **kw)
    assert path.with_name("c.h5.partial").exists()
    resumed = build_cache(path, items, **kw)
    assert resumed.n_resumed == 6 and resumed.n_processed == 4
    build_cache(tmp_path / "b" / "c.h5", items, **kw)
    assert _contents(path) == _contents(tmp_path / "b" / "c.h5")


@pytest.fixture
def paper_cache(tmp_path: Path) -> Path:
    root = tmp_path / "cifar"
    make_cifar10dvs(root, per_class=1)
    items = [(root / c / f"cifar10_{c}_0.aedat", label) for label, c in enumerate(CIFAR10DVS_CLASSES)][:3]
    path = tmp_path / "c.h5"
    build_cache(path, items, classes=list(CIFAR10DVS_CLASSES), cfg=PAPER, split="train", protocol="paper",
                workers=1, progress=False)
    return path


@pytest.mark.parametrize("damage, message", [
    (lambda f: f["peak"].__setitem__(1, np.nan), "NaN, infinite or negative values"),
    (lambda f: f["peak"].__setitem__(0, -1.0), "NaN, infinite or negative values"),
    (lambda f: f.attrs.__setitem__("value_range", np.array([0.0, np.inf])), "value_range"),
    (lambda f: f.attrs.__setitem__("protocol", "events"), "does not belong to protocol 'events'"),
    (lambda f: f.attrs.__setitem__("protocol", "nope"), "unknown protocol"),
])
def test_damaged_paper_cache_is_one_line_error_naming_the_file(paper_cache: Path, damage, message: str) -> None:  # noqa: ANN001
    with h5py.File(paper_cache, "r+") as f:
        damage(f)
    with pytest.raises(CacheError, match=message) as err:
        open_cache(paper_cache)
    assert str(paper_cache) in str(err.value) and "\n" not in str(err.value)


def test_nan_frames_behind_a_forged_checksum_fail_verification(paper_cache: Path) -> None:
    import zlib

    with h5py.File(paper_cache, "r+") as f:
        sample = f["frames"][2]
        sample[0, 0, 0, 0] = np.nan
        f["frames"][2] = sample
        f["crc"][2] = zlib.crc32(sample.tobytes())
    open_cache(paper_cache)
    with pytest.raises(CacheError, match="value check, first index 2"):
        verify_cache(paper_cache)


def test_build_refuses_a_framing_of_another_protocol(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="frames by 'resize'"):
        build_cache(tmp_path / "c.h5", [], classes=["a"], cfg=FramingConfig(), split="train", protocol="paper",
                    progress=False)
