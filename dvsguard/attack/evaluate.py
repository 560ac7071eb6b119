"""Robust accuracy of a model on batches of samples, white box and black box, as a table.

Robust accuracy = share of samples the target classifies correctly on the clean input and that
no attack (no ensemble member) makes it misclassify. White box crafts on the target, black box on a
source model and judges on the target. Batches carry the samples' global indices, so results do not
depend on the batch size or on how ``torchrun`` splits the samples across ranks (counts are summed
with ``all_reduce``). :mod:`dvsguard.stages.attack` runs it on a checkpoint and a cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dvsguard.attack import make_attack
from dvsguard.attack.base import CLAMPS, ValueRange, eval_mode, parse_mode, predict
from dvsguard.attack.ensemble import Ensemble, gamma_grid, has_spiking_neurons, paper_modes
from dvsguard.errors import AttackError
from dvsguard.units import eps_label


DEFAULT_ATTACKS: tuple[str, ...] = ("clean", "fgsm", "pgd10", "pgd30", "pgd50", "apgd10")
DEFAULT_EPS: tuple[float, ...] = (8 / 255,)
WHITE, BLACK = "white", "black"

Batch = tuple[Tensor, Tensor, Tensor]
"""(x ``[T, B, 2, H, W]`` float in value_range, y ``[B]`` int64, global sample ids ``[B]`` int64)."""


@dataclass(frozen=True)
class EvalConfig:
    """What to run.

    Attributes:
        attacks: names from the registry (``pgd<k>``/``apgd<k>`` for any k); ``clean`` = no attack.
        eps: radii in frame units.
        ensemble: run each attack under every gradient mode in ``modes`` (the paper's four by
            default) and count a sample as fooled if any of them fools it; otherwise the crafting
            model's own gradient mode only.
        modes: gradient modes of the ensemble (``GradientMode`` or strings); None = the paper's.
            The string ``"grid"`` (or ``"grid:sigmoid"``) stands for 30 surrogates of that shape
            (default triangle) with widths γ = 0.1, 0.2, …, 3.0 (appendix G).
        early_exit: skip samples already fooled (same result, less work).
        batch_size, limit: samples per batch; evaluate a seeded subset of ``limit`` samples.
        seed: keys every random start (per sample) and the subset.
        attack_kwargs: extra keyword arguments per attack name (e.g. ``{"pgd10": {"alpha": 0.01}}``).
        pgd_alpha: step α of every ``pgd<k>`` in frame units (None: 2.5·ε/k).
        clamp: ``data`` (examples stay in the data's value range) or ``unit`` (clamped to [0, 1]
            as torchattacks does; see :mod:`dvsguard.attack.base`).
        source_modes: gradient modes of the black-box source (None: those of the white box).
    """

    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    eps: tuple[float, ...] = DEFAULT_EPS
    ensemble: bool = True
    modes: tuple[Any, ...] | None = None
    early_exit: bool = True
    batch_size: int = 64
    limit: int | None = None
    seed: int = 0
    attack_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pgd_alpha: float | None = None
    clamp: str = "data"
    source_modes: tuple[Any, ...] | None = None

    def kwargs(self, name: str) -> dict[str, Any]:
        """Keyword arguments for the attack called ``name``."""
        kw = dict(self.attack_kwargs.get(name, {}))
        if self.pgd_alpha is not None and name.startswith("pgd"):
            kw.setdefault("alpha", self.pgd_alpha)
        return kw

    def __post_init__(self) -> None:
        if not self.attacks:
            raise AttackError("no attacks to run")
        if not self.eps or any(not e > 0 for e in self.eps):
            raise AttackError(f"eps must be a non-empty list of values > 0 (frame units), got {list(self.eps)}")
        if self.batch_size < 1:
            raise AttackError(f"batch size must be >= 1, got {self.batch_size}")
        if self.pgd_alpha is not None and not self.pgd_alpha > 0:
            raise AttackError(f"PGD step alpha must be > 0 (frame units), got {self.pgd_alpha}")
        if self.limit is not None and self.limit < 1:
            raise AttackError(f"limit must be >= 1, got {self.limit}")
        if self.modes is not None:
            object.__setattr__(self, "modes", expand_modes(self.modes))
        if self.source_modes is not None:
            object.__setattr__(self, "source_modes", expand_modes(self.source_modes))
        if self.clamp not in CLAMPS:
            raise AttackError(f"clamp must be one of {', '.join(CLAMPS)}, got {self.clamp!r}")
        for name in self.attacks:
            if name != "clean":
                make_attack(name, 1.0)  # raises AttackError on an unknown name


Key = tuple[str, float, str]


def expand_modes(modes: Sequence[Any]) -> tuple[Any, ...]:
    """Gradient modes with ``"grid"``/``"grid:<kind>"`` expanded to :func:`gamma_grid` (γ = 0.1…3.0)."""
    out: list[Any] = []
    for mode in modes:
        if isinstance(mode, str) and mode.strip().lower().startswith("grid"):
            _, _, kind = mode.strip().lower().partition(":")
            out += gamma_grid(kind or "triangle")
        else:
            out.append(parse_mode(mode))
    if not out:
        raise AttackError("the ensemble needs at least one gradient mode")
    return tuple(out)


@dataclass
class Tally:
    """Correctly classified samples per (attack, ε, setting) and the number of samples seen."""

    correct: dict[Key, int] = field(default_factory=dict)
    total: int = 0

    def add(self, key: Key, n: int) -> None:
        self.correct[key] = self.correct.get(key, 0) + int(n)


def attack_batch(
    target: nn.Module,
    batch: Batch,
    cfg: EvalConfig,
    value_range: ValueRange,
    tally: Tally,
    source: nn.Module | None = None,
    on_job: Callable[[], None] | None = None,
) -> None:
    """Run every (attack, ε, setting) of ``cfg`` on one batch and add the correct counts to ``tally``."""
    x, y, ids = batch
    with eval_mode(target):
        clean_ok = predict(target, x) == y
    tally.total += int(y.shape[0])
    settings = [(WHITE, target)] + ([(BLACK, source)] if source is not None else [])
    for name in cfg.attacks:
        if name == "clean":
            for setting, _ in settings:
                tally.add((name, 0.0, setting), int(clean_ok.sum()))
            if on_job:
                on_job()
            continue
        for eps in cfg.eps:
            attack = make_attack(name, eps, value_range=value_range, seed=cfg.seed, clamp=cfg.clamp,
                                 **cfg.kwargs(name))
            for setting, crafter in settings:
                modes = cfg.modes if cfg.ensemble else (None,)
                if setting == BLACK and cfg.source_modes is not None:
                    modes = cfg.source_modes
                result = Ensemble(attack, modes=modes, early_exit=cfg.early_exit).run(crafter, x, y, ids, target=target)
                tally.add((name, eps, setting), int((~result.fooled).sum()))
                if on_job:
                    on_job()


def evaluate(
    target: nn.Module,
    batches: Iterable[Batch],
    cfg: EvalConfig,
    value_range: ValueRange = (0.0, 1.0),
    source: nn.Module | None = None,
    on_job: Callable[[], None] | None = None,
) -> Tally:
    """Tally robust accuracy over ``batches`` (one process; see :func:`gather` for several)."""
    tally = Tally()
    for batch in batches:
        attack_batch(target, batch, cfg, value_range, tally, source, on_job)
    return tally


def result_keys(cfg: EvalConfig, black_box: bool) -> list[Key]:
    """Every (attack, ε, setting) the configuration produces, in table order."""
    settings = [WHITE] + ([BLACK] if black_box else [])
    keys: list[Key] = []
    for name in cfg.attacks:
        for eps in (0.0,) if name == "clean" else cfg.eps:
            keys += [(name, eps, s) for s in settings]
    return keys


def gather(tally: Tally, keys: Sequence[Key]) -> Tally:
    """Sum the counts of every rank (``all_reduce``) when a process group is up; identity otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tally
    counts = torch.tensor([tally.correct.get(k, 0) for k in keys] + [tally.total], dtype=torch.int64)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    values = counts.tolist()
    return Tally(correct=dict(zip(keys, values[:-1])), total=values[-1])


def select_indices(n: int, limit: int | None, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's sample indices: a seeded subset of ``limit`` (sorted), split round-robin over ranks."""
    if limit is not None and limit < n:
        g = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(n, generator=g)[:limit].sort().values.tolist()
    else:
        chosen = list(range(n))
    return chosen[rank::world]


def cache_batches(path: Path, indices: Sequence[int], batch_size: int) -> Iterator[Batch]:
    """Batches of the cache at ``path`` over ``indices`` in order, with their global ids."""
    from dvsguard.data.dataset import make_loader

    loader = make_loader(path, batch_size=batch_size, shuffle=False, sampler=list(indices))  # type: ignore[arg-type]
    start = 0
    for x, y in loader:
        ids = torch.tensor(indices[start : start + y.shape[0]], dtype=torch.long)
        start += y.shape[0]
        yield x, y, ids


def rows(tally: Tally, keys: Sequence[Key]) -> list[dict[str, Any]]:
    """One record per (attack, ε, setting): correct, total, accuracy (0..1)."""
    out = []
    for name, eps, setting in keys:
        correct = tally.correct.get((name, eps, setting), 0)
        out.append(
            {
                "attack": name,
                "eps": eps,
                "eps_label": eps_label(eps) if eps else "0",
                "setting": setting,
                "correct": correct,
                "total": tally.total,
                "accuracy": correct / tally.total if tally.total else float("nan"),
            }
        )
    return out


def markdown_table(records: Sequence[dict[str, Any]], eps_list: Sequence[float]) -> str:
    """A table like the paper's Tables 1/2: rows = attacks, columns = white/black box per ε (accuracy %)."""
    settings = [s for s in (WHITE, BLACK) if any(r["setting"] == s for r in records)]
    attacks = list(dict.fromkeys(r["attack"] for r in records))
    cols = [(s, e) for s in settings for e in eps_list]
    title = {WHITE: "White box", BLACK: "Black box"}
    head = ["Attack"] + [f"{title[s]} ε={eps_label(e)}" if len(eps_list) > 1 else title[s] for s, e in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
    acc = {(r["attack"], r["eps"], r["setting"]): r["accuracy"] for r in records}
    for name in attacks:
        cells = []
        for s, e in cols:
            value = acc.get((name, 0.0 if name == "clean" else e, s))
            cells.append("—" if value is None else f"{100 * value:.2f}")
        lines.append("| " + " | ".join([name.upper() if name != "clean" else "Clean"] + cells) + " |")
    return "\n".join(lines)
