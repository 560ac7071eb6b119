"""Robust accuracy of a checkpoint on a cache split, white box and black box, as a table.

Robust accuracy = share of samples the target classifies correctly on the clean input and that
no attack (no ensemble member) makes it misclassify. White box crafts on the target, black box on a
source model and judges on the target. Batches carry the samples' global indices, so results do not
depend on the batch size or on how ``torchrun`` splits the samples across ranks (counts are summed
with ``all_reduce`` and rank 0 writes the files).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dvsguard.atomic import atomic_open, write_text
from dvsguard.attack import make_attack
from dvsguard.attack.base import ValueRange, eval_mode, parse_mode, predict
from dvsguard.attack.ensemble import Ensemble, gamma_grid, has_spiking_neurons, paper_modes
from dvsguard.errors import AttackError

log = logging.getLogger(__name__)

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


def parse_eps(text: str | float) -> float:
    """``"8/255"``, ``"0.031"`` or a number → float ε (frame units)."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise AttackError(f"eps {text!r} is not a number or a fraction such as 8/255") from None
    if not value > 0:
        raise AttackError(f"eps must be > 0, got {text!r}")
    return value


def parse_eps_list(text: str) -> tuple[float, ...]:
    """``"8/255,4/255"`` → (0.0314, 0.0157)."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise AttackError("eps list is empty")
    return tuple(parse_eps(p) for p in parts)


def eps_label(eps: float) -> str:
    """``8/255`` when ε is a whole number of 255ths, else ``0.031``."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{eps:.4g}"


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
            attack = make_attack(name, eps, value_range=value_range, seed=cfg.seed, **cfg.kwargs(name))
            for setting, crafter in settings:
                modes = cfg.modes if cfg.ensemble else (None,)
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


def plot_robust_vs_eps(records: Sequence[dict[str, Any]], eps_list: Sequence[float], path: Path) -> Path:
    """Robust accuracy (%) against ε per attack (white solid, black dashed) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [e * 255 for e in eps_list]
    clean = next((r["accuracy"] for r in records if r["attack"] == "clean"), None)
    if clean is not None:
        ax.axhline(100 * clean, color="grey", linestyle=":", label="clean")
    attacks = [a for a in dict.fromkeys(r["attack"] for r in records) if a != "clean"]
    for i, name in enumerate(attacks):
        for setting, style in ((WHITE, "-"), (BLACK, "--")):
            ys = [r["accuracy"] * 100 for e in eps_list for r in records
                  if r["attack"] == name and r["setting"] == setting and r["eps"] == e]
            if len(ys) == len(xs):
                ax.plot(xs, ys, style, marker="o", color=f"C{i}", label=f"{name.upper()} ({setting} box)")
    ax.set_xlabel("ε (×1/255 of the frame range)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    return path


def _join_group() -> tuple[int, int, bool]:
    """(rank, world, joined here): join the gloo group when ``torchrun`` set WORLD_SIZE > 1."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        return rank, world, True
    return rank, world, False


def run(
    checkpoint: str | os.PathLike[str],
    cache: str | os.PathLike[str],
    cfg: EvalConfig,
    *,
    split: str = "test",
    source: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the ``split`` sibling of ``cache``; write attack.json/.md (and the PNG).

    Returns the JSON record (on every rank; only rank 0 writes files). Under ``torchrun`` each rank
    takes every ``world``-th sample and the counts are summed.
    """
    from dvsguard.data.cache import open_cache, split_path
    from dvsguard.progress import make_progress
    from dvsguard.snn.checkpoint import load_model

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    checkpoint = Path(checkpoint)
    target, _ = load_model(checkpoint)
    source_model = load_model(source)[0] if source is not None else None
    test_path = Path(split_path(cache, split))
    info = open_cache(test_path)
    n_classes = target.cfg.num_classes
    if len(info.classes) != n_classes:
        raise AttackError(f"{checkpoint}: model has {n_classes} classes but {test_path} has {len(info.classes)}")
    if source_model is not None and source_model.cfg.num_classes != n_classes:
        raise AttackError(f"{source}: source model has {source_model.cfg.num_classes} classes, target {n_classes}")
    value_range = (float(info.value_range[0]), float(info.value_range[1]))

    rank, world, joined = _join_group()
    try:
        indices = select_indices(info.n_samples, cfg.limit, cfg.seed, rank, world)
        keys = result_keys(cfg, source_model is not None)
        n_batches = -(-len(indices) // cfg.batch_size)
        per_batch = sum(1 if a == "clean" else len(cfg.eps) * (2 if source_model is not None else 1) for a in cfg.attacks)
        with make_progress() as progress:
            task = progress.add_task(f"attacks (rank {rank})" if world > 1 else "attacks", total=n_batches * per_batch)
            tally = evaluate(
                target,
                cache_batches(test_path, indices, cfg.batch_size),
                cfg,
                value_range,
                source_model,
                on_job=lambda: progress.advance(task),
            )
        tally = gather(tally, keys)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()

    records = rows(tally, keys)
    members = [str(m) for m in (cfg.modes if cfg.modes is not None else paper_modes())] if cfg.ensemble else []
    if cfg.ensemble and not has_spiking_neurons(target):
        members = []
    out = Path(out_dir) if out_dir is not None else checkpoint.parent
    table = markdown_table(records, cfg.eps)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "source": str(source) if source is not None else None,
        "cache": str(test_path),
        "split": split,
        "n_samples": tally.total,
        "seed": cfg.seed,
        "ensemble": cfg.ensemble,
        "members": members,
        "attacks": list(cfg.attacks),
        "eps": list(cfg.eps),
        "value_range": list(value_range),
        "pgd_alpha": cfg.pgd_alpha if cfg.pgd_alpha is not None else "2.5*eps/steps",
        "world_size": world,
        "results": records,
        "clean_accuracy": next((r["accuracy"] for r in records if r["attack"] == "clean"), None),
        "seconds": round(time.perf_counter() - t0, 3),
        "table": table,
        "paths": {},
    }
    if rank == 0:
        paths = {"json": out / "attack.json", "md": out / "attack.md"}
        if len(cfg.eps) > 1:
            paths["png"] = plot_robust_vs_eps(records, cfg.eps, out / "robust_vs_eps.png")
        result["paths"] = {k: str(v) for k, v in paths.items()}
        header = (
            f"# Robust accuracy (%) of {checkpoint.name}\n\n"
            f"{tally.total} samples of {test_path.name}; ε = {', '.join(eps_label(e) for e in cfg.eps)}; "
            f"{'ensemble over ' + ', '.join(members) if members else 'no ensemble'}"
            f"{'; black box source ' + Path(source).name if source is not None else ''}; seed {cfg.seed}.\n\n"
        )
        write_text(paths["md"], header + table + "\n")
        write_text(paths["json"], json.dumps(result, indent=2, default=str) + "\n")
    result["rank"] = rank
    log.info("attack evaluation of %d samples took %.1f s", tally.total, result["seconds"])
    return result
