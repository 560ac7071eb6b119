"""Data-parallel training under ``torchrun``: process group, samplers and reductions.

``torchrun --nproc-per-node N -m dvsguard train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` then joins the process group (NCCL on GPUs, gloo on CPU). Without those
variables everything runs in one process and the reductions are identities.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from dvsguard.errors import TrainError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → the GPU of this process if one is present, else the CPU; or an explicit name."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("device 'cuda' was requested but no GPU is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise TrainError(f"device {name!r} is not a valid torch device ({e})") from None


def setup(device: str = "auto") -> Context:
    """Join the ``torchrun`` process group if the environment asks for one; return the context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        log.debug("rank %d/%d joined the %s process group", rank, world, backend)
    return Context(rank=rank, world=world, local_rank=local_rank, device=dev)


def teardown(ctx: Context) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], ctx: Context) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def any_rank(flag: bool, ctx: Context) -> bool:
    """True if ``flag`` is true on any rank."""
    return all_sum([1.0 if flag else 0.0], ctx)[0] > 0


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


class EpochSampler(Sampler[int]):
    """Indices of one rank for one epoch: a fixed subset, reshuffled per epoch from the seed.

    The subset is the first ``limit`` of a seeded permutation (all samples without a limit).
    Each epoch the subset is permuted by a generator seeded from ``(seed, epoch)`` — the same
    on every rank — and split round-robin over ``world`` ranks; with ``pad`` (training) the
    order is padded by wrapping so every rank gets the same number of samples, like
    ``DistributedSampler``. The order of an epoch depends on nothing but ``(seed, epoch)``.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool = True, limit: int | None = None,
                 rank: int = 0, world: int = 1, pad: bool = True, where: str | os.PathLike[str] = "") -> None:
        if n <= 0:
            raise TrainError(f"{where}: holds no samples; expected at least one" if where else "the dataset is empty")
        self.seed, self.shuffle, self.rank, self.world, self.pad = seed, shuffle, rank, world, pad
        if limit is not None and limit < n:
            g = torch.Generator().manual_seed(seed)
            self.subset = torch.randperm(n, generator=g)[:limit].sort().values
        else:
            self.subset = torch.arange(n)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return self.subset
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 1)
        return self.subset[torch.randperm(len(self.subset), generator=g)]

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self.pad and self.world > 1 and len(order) % self.world:
            total = -(-len(order) // self.world) * self.world
            order = order.repeat(-(-total // len(order)))[:total]
        return iter(order[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        n = len(self.subset)
        if self.pad and self.world > 1:
            return -(-n // self.world)
        return len(range(self.rank, n, self.world))
