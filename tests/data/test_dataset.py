"""FrameDataset and make_loader: values, time-first batches, per-worker handles, augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dvsguard.data.cache import build_cache
from dvsguard.data.dataset import FrameDataset, augment_frames, collate_time_first, make_loader
from dvsguard.data.events import EVENT_DTYPE, write_npz
from dvsguard.data.frames import FramingConfig
from dvsguard.errors import CacheError

CFG = FramingConfig(n_frames=4, height=16, width=16, count_cap=5)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    items = []
    for i in range(10):
        n = 4000
        ev = np.empty(n, dtype=EVENT_DTYPE)
        ev["x"] = rng.integers(0, 16, n)
        ev["y"] = rng.integers(0, 16, n)
        ev["t"] = np.sort(rng.integers(0, 10_000, n))
        ev["p"] = rng.integers(0, 2, n)
        items.append((write_npz(root / f"r{i}.npz", ev, (16, 16, 2)), i % 2))
    path = root / "c.h5"
    build_cache(path, items, classes=["even", "odd"], cfg=CFG, split="train", workers=1, progress=False)
    return path


def test_items_are_scaled_counts_and_labels(cache: Path) -> None:
    ds = FrameDataset(cache)
    assert len(ds) == 10 and ds.classes == ["even", "odd"]
    with h5py.File(cache, "r") as f:
        counts = f["frames"][3]
    x, y = ds[3]
    assert x.dtype == torch.float32 and tuple(x.shape) == (4, 2, 16, 16)
    assert y == 1 and isinstance(y, int)
    torch.testing.assert_close(x, torch.from_numpy(counts).float() / 5)
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0  # some pixels reach the cap
    with pytest.raises(IndexError):
        ds[10]


def test_dataset_pickles_without_its_handle_and_reopens(cache: Path) -> None:
    ds = FrameDataset(cache)
    first = ds[0][0]
    assert ds._file is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None
    torch.testing.assert_close(clone[0][0], first)
    assert clone._file is not None and clone._file is not ds._file


def test_dataset_refuses_a_damaged_cache(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match="bad.h5"):
        FrameDataset(bad)


def test_loader_batches_are_time_first(cache: Path) -> None:
    loader = make_loader(cache, batch_size=4, shuffle=False)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 4, 2, 16, 16), (4, 4, 2, 16, 16), (4, 2, 2, 16, 16)]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.tolist() == [0, 1, 0, 1]
    ds = FrameDataset(cache)
    torch.testing.assert_close(x[:, 2], ds[2][0])  # sample 2 of the batch, all T frames


def test_workers_open_their_own_handles_and_give_the_same_batches(cache: Path) -> None:
    ds_loader = make_loader(cache, batch_size=3, shuffle=True, seed=3, num_workers=2)
    ds_loader.dataset[0]  # the parent's handle must not leak into the workers
    with_workers = [(x.clone(), y.clone()) for x, y in ds_loader]
    in_process = list(make_loader(cache, batch_size=3, shuffle=True, seed=3, num_workers=0))
    assert len(with_workers) == len(in_process) == 4
    for (xa, ya), (xb, yb) in zip(with_workers, in_process):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_shuffle_and_augmentation_repeat_with_the_seed(cache: Path) -> None:
    def run(seed: int) -> list[torch.Tensor]:
        return [x for x, _ in make_loader(cache, batch_size=5, shuffle=True, augment=True, seed=seed)]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    plain = [x for x, _ in make_loader(cache, batch_size=5, shuffle=True, seed=1)]
    assert not all(torch.equal(u, v) for u, v in zip(a, plain))


def test_augmentation_shifts_and_flips_all_frames_alike() -> None:
    x = torch.zeros(6, 2, 16, 16)
    x[:, :, 8, 2] = 1.0  # one lit pixel, the same in every frame and channel
    gen = torch.Generator().manual_seed(0)
    flipped = shifted = 0
    for _ in range(200):
        out = augment_frames(x, gen)
        assert out.shape == x.shape
        lit = out.nonzero()
        if len(lit) == 0:
            continue  # cropped out of view (the pixel lies 2 px from the edge)
        rows, cols = lit[:, 2].unique(), lit[:, 3].unique()
        assert len(rows) == 1 and len(cols) == 1 and len(lit) == 12  # every t and channel moved alike
        r, c = int(rows), int(cols)
        assert abs(r - 8) <= 4
        if c <= 6:  # not flipped: column 2 shifted by at most 4
            shifted += (r, c) != (8, 2)
        else:  # flipped: column 15 - (2 + shift)
            assert 9 <= c <= 15
            flipped += 1
    assert flipped > 50 and shifted > 50
    assert torch.equal(augment_frames(x, torch.Generator().manual_seed(5)), augment_frames(x, torch.Generator().manual_seed(5)))


def test_collate_time_first_shapes() -> None:
    batch = [(torch.full((3, 2, 4, 4), float(i)), i) for i in range(5)]
    x, y = collate_time_first(batch)
    assert tuple(x.shape) == (3, 5, 2, 4, 4) and y.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(x[:, 4], batch[4][0])


def test_damaged_chunk_is_a_cache_error(cache: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(cache.read_bytes())
    with h5py.File(damaged, "r+") as f:
        offset = f["frames"].id.get_chunk_info(4).byte_offset
    with open(damaged, "r+b") as fh:  # overwrite the start of sample 4's deflate stream
        fh.seek(offset)
        fh.write(b"\xff" * 16)
    ds = FrameDataset(damaged)
    ds[3]
    with pytest.raises(CacheError, match=r"damaged.h5: sample 4 cannot be read"):
        ds[4]
