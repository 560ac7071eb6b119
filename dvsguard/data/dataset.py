"""A torch ``Dataset`` over one HDF5 frame cache, and the loader that batches it time-first.

Items are ``(x, y)``: x float32 ``[T, 2, H, W]`` = ``count / count_cap`` in [0, 1], y an int
class index. Batches from :func:`make_loader` are x float32 ``[T, B, 2, H, W]`` (time first)
and y int64 ``[B]``.

Each process (the main one or a DataLoader worker) opens its own read-only h5py handle on
its first ``__getitem__``; the dataset pickles without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from dvsguard.data.cache import CacheInfo, open_cache
from dvsguard.data.frames import frames_to_float
from dvsguard.errors import CacheError, ConfigError

CROP_PADDING = 4  # pixels of zero padding before the random crop
AUGMENTS = ("crop-flip", "nda")
NDA_ROLL = 5  # roll shifts are drawn from -NDA_ROLL..NDA_ROLL pixels, rows and columns independently
NDA_DEGREES = 30.0  # rotation angles are drawn uniformly from [-NDA_DEGREES, NDA_DEGREES]
NDA_CUTOUT = 16  # side of the cutout square, pixels
NDA_OPS = ("roll", "rotate", "cutout")


def augment_frames(x: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Random crop after ``padding`` zero pixels on each side, then a horizontal flip with p = 0.5.

    ``x`` is ``[T, C, H, W]``; all T frames of the sample get the same crop and flip.
    """
    h, w = x.shape[-2:]
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        i, j = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,), generator=generator))
        x = padded[..., i : i + h, j : j + w]
    if bool(torch.rand((), generator=generator) < 0.5):
        x = x.flip(-1)
    return x.contiguous()


def nda_roll(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` ``[..., H, W]`` rolled (wrapping around) ``dy`` rows down and ``dx`` columns right."""
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def nda_rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` (float) rotated counter-clockwise by ``degrees`` about the image centre.

    torchvision's tensor ``rotate`` as ``RandomRotation`` calls it by default: nearest-neighbour
    sampling, the output the size of the input, pixels from outside the image 0. The inverse
    map is applied to the pixel centres (coordinates relative to the centre), normalised by
    half the image size and sampled with ``grid_sample(align_corners=False)``, as torchvision does.
    """
    h, w = x.shape[-2:]
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    ys = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack(((cos * gx - sin * gy) / (w / 2), (sin * gx + cos * gy) / (h / 2)), dim=-1)
    grid = grid.to(x.dtype).expand(x.shape[0], h, w, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def nda_cutout(x: torch.Tensor, cy: int, cx: int, length: int = NDA_CUTOUT) -> torch.Tensor:
    """``x`` ``[..., H, W]`` with rows ``cy − length//2 … cy + length//2 − 1`` and the same columns
    around ``cx`` set to 0, clipped at the border (the authors' ``Cutout_dvs``: a centre anywhere
    in the image, so a square near the border is cut off)."""
    h, w = x.shape[-2:]
    y1, y2 = min(max(cy - length // 2, 0), h), min(max(cy + length // 2, 0), h)
    x1, x2 = min(max(cx - length // 2, 0), w), min(max(cx + length // 2, 0), w)
    out = x.clone()
    out[..., y1:y2, x1:x2] = 0
    return out


def augment_nda(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The authors' CIFAR10-DVS augmentation: a horizontal flip with p = 0.5, then one NDA op.

    As ``trans_t``/``function_nda`` (M = 1, N = 2) in putshua/gradient_reg_defense
    ``data_loaders.py`` (commit ce6d16c): the op is drawn uniformly from roll (row and column
    shifts drawn independently from −5…5 px, wrapping), rotation (an angle uniform in
    [−30°, 30°], :func:`nda_rotate`) and a 16×16 cutout (centre uniform over the image,
    :func:`nda_cutout`). ``x`` is ``[T, C, H, W]``; all T frames of the sample get the same
    flip and op. The authors drew from Python's ``random``, numpy and torch's global generator;
    here every draw comes from ``generator``, so the draws differ but their distributions do not.
    """
    h, w = x.shape[-2:]
    if bool(torch.rand((), generator=generator) < 0.5):
        x = x.flip(-1)
    op = NDA_OPS[int(torch.randint(0, len(NDA_OPS), (), generator=generator))]
    if op == "roll":
        dy, dx = (int(v) for v in torch.randint(-NDA_ROLL, NDA_ROLL + 1, (2,), generator=generator))
        x = nda_roll(x, dy, dx)
    elif op == "rotate":
        degrees = float(torch.empty(()).uniform_(-NDA_DEGREES, NDA_DEGREES, generator=generator))
        x = nda_rotate(x, degrees)
    else:
        cy = int(torch.randint(0, h, (), generator=generator))
        cx = int(torch.randint(0, w, (), generator=generator))
        x = nda_cutout(x, cy, cx)
    return x.contiguous()


def augmenter(kind: str) -> Any:
    """The augmentation function ``(x [T, C, H, W], generator) → x`` called ``kind`` (:data:`AUGMENTS`)."""
    if kind == "crop-flip":
        return augment_frames
    if kind == "nda":
        return augment_nda
    raise ConfigError(f"augmentation {kind!r} is unknown; expected one of {', '.join(AUGMENTS)}")


class FrameDataset(Dataset):
    """Samples of the frame cache at ``path`` (validated on construction).

    ``augment`` applies the augmentation called ``augmentation`` (``crop-flip``:
    :func:`augment_frames`; ``nda``: :func:`augment_nda`) with a generator seeded from ``seed``
    (in the main process) or from the DataLoader worker's seed (in a worker), so runs repeat.
    """

    def __init__(self, path: str | os.PathLike, augment: bool = False, seed: int = 0,
                 augmentation: str = "crop-flip") -> None:
        self.path = Path(path)
        self._augment_fn = augmenter(augmentation)
        self.info: CacheInfo = open_cache(self.path)
        self.augment = augment
        self.augmentation = augmentation
        self.seed = seed
        with h5py.File(self.path, "r") as f:
            self.labels = f["labels"][()].astype(np.int64)
        self._file: h5py.File | None = None
        self._frames: h5py.Dataset | None = None
        self._pid: int | None = None
        self._generator: torch.Generator | None = None

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def __len__(self) -> int:
        return self.info.n_samples

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_file=None, _frames=None, _pid=None, _generator=None)
        return state

    def _open(self) -> h5py.Dataset:
        if self._frames is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise CacheError(f"{self.path}: cannot be opened ({' '.join(str(exc).split())})") from None
            self._frames = self._file["frames"]
            if self._generator is None or self._pid != os.getpid():
                worker = get_worker_info()
                seed = worker.seed if worker is not None else self.seed
                self._generator = torch.Generator().manual_seed(int(seed) % (2**63))
            self._pid = os.getpid()
        return self._frames

    def counts(self, index: int) -> np.ndarray:
        """The stored uint8 counts of one sample, ``[T, 2, H, W]``."""
        return self._open()[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        try:
            frames = self._open()[int(index) % len(self)]
        except OSError as exc:  # a damaged chunk
            raise CacheError(f"{self.path}: sample {index} cannot be read ({' '.join(str(exc).split())})") from None
        # scaled in numpy: a per-sample torch op would wake torch's thread pool for 46k elements
        x = torch.from_numpy(frames_to_float(frames, self.info.count_cap))
        if self.augment:
            assert self._generator is not None
            x = self._augment_fn(x, self._generator)
        return x, int(self.labels[index])

    def close(self) -> None:
        """Close this process's handle (it reopens on the next ``__getitem__``)."""
        if self._file is not None:
            self._file.close()
        self._file = self._frames = None


def collate_time_first(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(x [T, C, H, W], y), ...]`` → (x ``[T, B, C, H, W]``, y int64 ``[B]``)."""
    x = torch.stack([b[0] for b in batch], dim=1)
    y = torch.tensor([int(b[1]) for b in batch], dtype=torch.int64)
    return x, y


def make_loader(
    path: str | os.PathLike,
    batch_size: int,
    shuffle: bool,
    augment: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    augmentation: str = "crop-flip",
) -> DataLoader:
    """A DataLoader over the cache at ``path`` yielding (x float32 ``[T, B, 2, H, W]``, y int64 ``[B]``).

    ``augment`` applies the augmentation ``augmentation`` (:data:`AUGMENTS`) to each sample.
    Shuffling and augmentation draw from generators seeded with ``seed``, so two loaders
    built alike yield the same batches.
    """
    dataset = FrameDataset(path, augment=augment, seed=seed, augmentation=augmentation)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_time_first,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
    )
