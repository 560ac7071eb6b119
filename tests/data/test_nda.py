"""The authors' NDA augmentation (paper protocol): each op on hand-made frames, the flip, seeding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsguard.data import dataset as ds
from dvsguard.data.cache import build_cache
from dvsguard.data.dataset import augment_nda, make_loader, nda_cutout, nda_roll, nda_rotate
from dvsguard.data.events import EVENT_DTYPE, write_npz
from dvsguard.data.frames import FramingConfig
from dvsguard.errors import ConfigError


def _ramp(t: int = 2, c: int = 2, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.arange(t * c * h * w, dtype=torch.float32).view(t, c, h, w) + 1


def test_roll_wraps_rows_and_columns_independently() -> None:
    x = _ramp()
    out = nda_roll(x, 2, -3)
    for i in range(8):
        for j in range(8):
            assert torch.equal(out[..., (i + 2) % 8, (j - 3) % 8], x[..., i, j])
    assert torch.equal(out.sum((-2, -1)), x.sum((-2, -1)))  # nothing falls off the edge


def test_cutout_zeros_a_16x16_square_clipped_at_the_border() -> None:
    x = _ramp(h=40, w=40)
    out = nda_cutout(x, 20, 10)
    zero = out == 0
    assert torch.equal(zero[0, 0], zero[1, 1])  # every frame and channel alike
    rows, cols = torch.nonzero(zero[0, 0], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 27, 2, 17) and int(zero[0, 0].sum()) == 256
    assert torch.equal(out[~zero], x[~zero])
    corner = nda_cutout(x, 3, 39) == 0  # centre near a corner: rows 0..10, columns 31..39
    assert int(corner[0, 0].sum()) == 11 * 9 and bool(corner[0, 0, :11, 31:].all())


def test_rotation_by_90_degrees_is_rot90_and_by_0_the_identity() -> None:
    x = _ramp(h=9, w=9)
    assert torch.equal(nda_rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)))  # counter-clockwise
    assert torch.equal(nda_rotate(x, -90.0), torch.rot90(x, -1, dims=(-2, -1)))
    assert torch.equal(nda_rotate(_ramp(h=8, w=8), 90.0), torch.rot90(_ramp(h=8, w=8), 1, dims=(-2, -1)))
    assert torch.equal(nda_rotate(x, 0.0), x)


def test_rotation_samples_nearest_and_fills_zeros() -> None:
    x = torch.ones(1, 1, 16, 16)
    out = nda_rotate(x, 30.0)
    assert set(out.unique().tolist()) == {0.0, 1.0}  # nearest: no blended values
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 8, 8] == 1  # corners rotate out, the centre stays
    # a pixel at (row 4, col 12) from the centre (7.5, 7.5) lands where a 30° counter-clockwise turn puts it
    y = torch.zeros(1, 1, 16, 16)
    y[0, 0, 4, 12] = 1
    r, c = torch.nonzero(nda_rotate(y, 30.0)[0, 0], as_tuple=True)
    dx, dy = 12 - 7.5, 4 - 7.5
    a = math.radians(30)
    assert (int(r), int(c)) == (round(7.5 - dx * math.sin(a) + dy * math.cos(a)), round(7.5 + dx * math.cos(a) + dy * math.sin(a)))


def test_nda_draws_a_flip_and_one_op_per_sample_for_all_frames(monkeypatch) -> None:
    x = _ramp(t=3, h=16, w=16)
    ops = {"nda_roll": nda_roll, "nda_rotate": nda_rotate, "nda_cutout": nda_cutout}
    calls: list[tuple[str, tuple]] = []
    for name, real in ops.items():
        monkeypatch.setattr(ds, name, lambda t, *a, _n=name, _r=real: calls.append((_n, a)) or _r(t, *a))
    seen = dict.fromkeys(ops, 0)
    flips = 0
    for seed in range(300):
        calls.clear()
        flipped = bool(torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5)  # the first draw
        out = augment_nda(x, torch.Generator().manual_seed(seed))
        assert len(calls) == 1  # exactly one op
        name, args = calls[0]
        seen[name] += 1
        flips += flipped
        # all T frames of the sample got the same flip and op
        assert torch.equal(out, ops[name](x.flip(-1) if flipped else x, *args))
        if name == "nda_roll":
            assert all(-5 <= v <= 5 for v in args)
        elif name == "nda_rotate":
            assert -30 <= args[0] <= 30
        else:
            assert all(0 <= v < 16 for v in args)
    assert all(70 < n < 130 for n in seen.values()) and 110 < flips < 190


def test_nda_repeats_with_the_seed() -> None:
    x = torch.rand(4, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    a = [augment_nda(x, g) for g in [torch.Generator().manual_seed(3)] for _ in range(20)]
    b = [augment_nda(x, g) for g in [torch.Generator().manual_seed(3)] for _ in range(20)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, a[0]) for u in a[1:])


def test_loader_applies_nda_and_repeats_with_the_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        ev = np.empty(3000, dtype=EVENT_DTYPE)
        ev["x"], ev["y"] = rng.integers(0, 16, 3000), rng.integers(0, 16, 3000)
        ev["t"], ev["p"] = np.sort(rng.integers(0, 10_000, 3000)), rng.integers(0, 2, 3000)
        items.append((write_npz(tmp_path / f"r{i}.npz", ev, (16, 16, 2)), i % 2))
    path = tmp_path / "c.h5"
    build_cache(path, items, classes=["a", "b"], cfg=FramingConfig(n_frames=3, height=16, width=16), split="train",
                workers=1, progress=False)

    def run(seed: int, augmentation: str) -> list[torch.Tensor]:
        return [x for x, _ in make_loader(path, 3, shuffle=False, augment=True, seed=seed, augmentation=augmentation)]

    a, b, crop = run(1, "nda"), run(1, "nda"), run(1, "crop-flip")
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, crop))
    with pytest.raises(ConfigError, match="augmentation 'mixup' is unknown"):
        make_loader(path, 3, shuffle=False, augment=True, augmentation="mixup")
