"""Epoch samplers (subset, per-epoch order, rank shards) and RNG snapshots that survive weights_only."""

from __future__ import annotations

import random

import numpy as np
import torch

from dvsguard.train import rng
from dvsguard.train.distributed import EpochSampler


def test_epoch_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, seed=1), EpochSampler(50, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert sorted(a) == list(range(50))


def test_limit_is_a_fixed_subset_reshuffled_each_epoch():
    s = EpochSampler(100, seed=7, limit=10)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert len(first) == 10 and sorted(first) == sorted(second) and first != second
    assert sorted(first) != list(range(10))  # not simply the first samples (caches are sorted by class)


def test_rank_shards_are_disjoint_and_cover_the_epoch():
    shards = []
    for rank in range(3):
        s = EpochSampler(10, seed=0, rank=rank, world=3)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) == 4  # padded to equal length
    assert set().union(*map(set, shards)) == set(range(10))
    unpadded = [list(EpochSampler(10, seed=0, shuffle=False, rank=r, world=3, pad=False)) for r in range(3)]
    assert sorted(sum(unpadded, [])) == list(range(10))


def test_rng_snapshot_round_trips_through_weights_only(tmp_path):
    g = torch.Generator().manual_seed(5)
    rng.seed_everything(11)
    random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=g)
    snap = rng.capture({"attack": g})
    torch.save(snap, tmp_path / "s.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=g)))
    rng.seed_everything(99)
    torch.rand(3, generator=g)
    rng.restore(torch.load(tmp_path / "s.pt", weights_only=True), {"attack": g})
    got = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=g)))
    assert got == expected
