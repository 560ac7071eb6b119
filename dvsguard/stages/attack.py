"""attack: robust accuracy under FGSM/PGD/APGD, white box and black box, or against event budgets, as a table."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvsguard.stages.base import SEED_MAX, Result, check_output, option

if TYPE_CHECKING:  # pragma: no cover
    from dvsguard.stages.event_attack import EventAttackResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``dvsguard attack``."""

    checkpoint: Path = option(help="Checkpoint of the target model (.pt).", argument=True, wired=True)
    cache: Path = option(help="A frame cache (.h5) of the dataset; its --split sibling is attacked.", wired=True)
    split: str = option("test", "Which split of the cache to attack.", choices=("train", "test"))
    attacks: tuple[str, ...] = option(("clean", "fgsm", "pgd10", "pgd30", "pgd50", "apgd10"),
                                      "Comma list: clean, fgsm, rfgsm, random, pgd<k>, apgd<k>.", kind="list")
    eps: tuple[float, ...] = option((8 / 255,), "ε in frame units; a comma list draws robust accuracy against ε, "
                                    "e.g. 8/255,4/255.", kind="eps_list")
    ensemble: bool = option(True, "Fooled if any of the gradient modes triangle:1, sigmoid:4, atan:2, rga fools "
                                  "the model.")
    modes: tuple[str, ...] | None = option(None, "Ensemble gradient modes instead of the paper's four, e.g. "
                                           "triangle:0.5,rga; grid = 30 triangle widths γ 0.1…3.0.", kind="list")
    source: Path | None = option(None, "Black box: craft the examples on this checkpoint, judge them on the target.",
                                 wired=True)
    limit: int | None = option(None, "Attack a fixed seeded subset of N samples.", min=1)
    batch: int = option(64, "Samples per batch.", min=1)
    seed: int = option(0, "Seed of the random starts (per sample) and of the --limit subset.", min=0, max=SEED_MAX)
    alpha: float | None = option(None, "PGD step α in frame units, e.g. 0.01 or 2/255 (default: the protocol's, "
                                       "2.5·ε/k for events, 2.55/255 for paper).", kind="eps")
    clamp: str | None = option(None, "data: examples stay in the data's range; unit: clamped to [0, 1] as "
                                     "torchattacks does (default: the protocol's).", choices=("data", "unit"))
    source_modes: tuple[str, ...] | None = option(None, "Gradient modes of the black-box source (default: the "
                                                  "protocol's; paper: triangle:1, events: the white box's).",
                                                  kind="list")
    protocol: str | None = option(None, "events or paper (default: the checkpoint's; must agree with it).",
                                  choices=("events", "paper"), wired=True)
    out: Path | None = option(None, "Folder for attack.json, attack.md, robust_vs_eps.png (default: the "
                                    "checkpoint's).", wired=True)
    threat: str = option("frames", "frames: perturb float frames by ε (the paper's); events: insert/delete whole "
                                   "events in the integer counts (attack_events.json).", choices=("frames", "events"))
    event_attacks: tuple[str, ...] = option(("clean", "greedy", "random"), "Events threat: comma list of clean, "
                                            "greedy (gradient top-k), random (same budget).", kind="list")
    budget: tuple[int, ...] = option((16,), "Events threat: events inserted plus deleted per sample (L1 of the "
                                     "count change); a comma list draws a curve.", kind="list", min=0)
    per_bin_cap: int | None = option(None, "Events threat: at most N events changed per frame bin (pixel, "
                                           "polarity, time bin).", min=1)
    insert_only: bool = option(False, "Events threat: only insert events (no deletions).")
    step_events: int = option(8, "Events threat: events changed per greedy step (top-k bins).", min=1)
    netx: Path | None = option(None, "Events threat: judge success on this exported integer network (.net) "
                                     "instead of the float model.")
    write_recordings: Path | None = option(None, "Events threat: write each adversarial sample as an .npz "
                                                 "recording under DIR/<attack>-<budget>/<class>/ (time-binned "
                                                 "frames only).")


@dataclass
class AttackResult(Result):
    """Robust accuracy per (attack, ε, setting) and the files written (``paths``: json, md, png)."""

    checkpoint: str
    source: str | None
    cache: str
    split: str
    n_samples: int
    seed: int
    ensemble: bool
    members: list[str]
    attacks: list[str]
    eps: list[float]
    value_range: list[float]
    pgd_alpha: float | str
    protocol: str
    clamp: str
    source_modes: list[str] | None
    budgets: list[str]
    world_size: int
    results: list[dict[str, Any]]
    clean_accuracy: float | None
    seconds: float
    table: str
    paths: dict[str, str] = field(default_factory=dict)
    rank: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_json().items() if k != "table"}

    def summary(self) -> str:
        return f"{self.table}\n\n{self.n_samples} samples; written: {', '.join(self.paths.values())}"


def check(config: Config) -> None:
    """Refuse unknown attack names and gradient modes (and an --out that is a file) before anything runs."""
    _eval_config(config)
    if config.threat == "events":
        from dvsguard.attack.events import EventBudget, make_event_attack

        for name in config.event_attacks:
            if name.strip().lower() != "clean":
                make_event_attack(name, EventBudget(0, 1))
    check_output(config.out, "--out", folder=True)


def _eval_config(config: Config, protocol: str | None = None) -> Any:
    """The evaluation of ``config`` under ``protocol`` (its clamp, PGD step and source modes unless given)."""
    from dvsguard.attack.evaluate import EvalConfig
    from dvsguard.protocol import get

    rules = get(protocol or config.protocol, "--protocol")
    source_modes = config.source_modes if config.source_modes is not None else rules.black_box_modes
    return EvalConfig(attacks=tuple(a.lower() for a in config.attacks), eps=config.eps, ensemble=config.ensemble,
                      modes=config.modes, batch_size=config.batch, limit=config.limit, seed=config.seed,
                      pgd_alpha=config.alpha if config.alpha is not None else rules.pgd_alpha,
                      clamp=config.clamp or rules.clamp, source_modes=source_modes)


def run(config: Config) -> AttackResult | EventAttackResult:
    """Evaluate ``checkpoint`` on the ``split`` sibling of ``cache``; rank 0 writes attack.json/.md (and the PNG).

    Under ``torchrun`` each rank takes every ``world``-th sample and the counts are summed.
    ``--threat events`` runs :func:`dvsguard.stages.event_attack.run` instead (one process).
    """
    from dvsguard.attack.ensemble import has_spiking_neurons, paper_modes
    from dvsguard.attack.evaluate import cache_batches, evaluate, gather, markdown_table, result_keys, rows, select_indices
    from dvsguard.progress import make_progress
    from dvsguard.snn.checkpoint import load_model
    from dvsguard.train import distributed
    from dvsguard.units import budget_note

    t0 = time.perf_counter()
    check_output(config.out, "--out", folder=True)
    if config.threat == "events":
        from dvsguard.stages import event_attack

        return event_attack.run(config)
    target, payload = load_model(config.checkpoint)
    source_model = load_model(config.source)[0] if config.source is not None else None
    test_path, info, protocol = checked_split(config, target, payload, source_model)
    cfg = _eval_config(config, protocol.name)
    value_range = (float(info.value_range[0]), float(info.value_range[1]))
    budgets = [budget_note("ε", e, protocol.name, info.count_cap, info.sensor_size, (info.height, info.width))
               for e in cfg.eps]
    for note in budgets:
        log.info("%s", note)

    ctx = distributed.setup("cpu")
    try:
        indices = select_indices(info.n_samples, cfg.limit, cfg.seed, ctx.rank, ctx.world)
        keys = result_keys(cfg, source_model is not None)
        n_batches = -(-len(indices) // cfg.batch_size)
        per_batch = sum(1 if a == "clean" else len(cfg.eps) * (2 if source_model is not None else 1)
                        for a in cfg.attacks)
        with make_progress() as progress:
            task = progress.add_task(f"attacks (rank {ctx.rank})" if ctx.distributed else "attacks",
                                     total=n_batches * per_batch)
            tally = evaluate(target, cache_batches(test_path, indices, cfg.batch_size), cfg, value_range,
                             source_model, on_job=lambda: progress.advance(task))
        tally = gather(tally, keys)
    finally:
        distributed.teardown(ctx)

    records = rows(tally, keys)
    members = [str(m) for m in (cfg.modes if cfg.modes is not None else paper_modes())] if cfg.ensemble else []
    if cfg.ensemble and not has_spiking_neurons(target):
        members = []
    result = AttackResult(
        checkpoint=str(config.checkpoint), source=str(config.source) if config.source is not None else None,
        cache=str(test_path), split=config.split, n_samples=tally.total, seed=cfg.seed, ensemble=cfg.ensemble,
        members=members, attacks=list(cfg.attacks), eps=list(cfg.eps), value_range=list(value_range),
        pgd_alpha=cfg.pgd_alpha if cfg.pgd_alpha is not None else "2.5*eps/steps", protocol=protocol.name,
        clamp=cfg.clamp, source_modes=([str(m) for m in cfg.source_modes] if cfg.source_modes is not None
                                       and source_model is not None else None),
        budgets=budgets, world_size=ctx.world,
        results=records, clean_accuracy=next((r["accuracy"] for r in records if r["attack"] == "clean"), None),
        seconds=round(time.perf_counter() - t0, 3), table=markdown_table(records, cfg.eps), rank=ctx.rank,
    )
    if ctx.is_main:
        _write(result, config, Path(config.out) if config.out is not None else Path(config.checkpoint).parent)
    log.info("attack evaluation of %d samples took %.1f s", tally.total, result.seconds)
    return result


def checked_split(config: Config, target: Any, payload: dict[str, Any], source_model: Any) -> tuple[Path, Any, Any]:
    """(path, CacheInfo, protocol) of the ``split`` sibling of ``config.cache``, checked against the models.

    ``AttackError`` when the split holds no samples or its classes or frame size differ from a model's.
    """
    from dvsguard.data.cache import open_cache, split_path
    from dvsguard.errors import AttackError
    from dvsguard.protocol import inherit

    protocol = inherit(config.protocol, (payload.get("data") or {}).get("protocol"), str(config.checkpoint))
    test_path = Path(split_path(config.cache, config.split))
    info = open_cache(test_path)
    if info.n_samples == 0:
        failed = f" (all {len(info.failed)} of its recordings failed to read)" if info.failed else ""
        raise AttackError(f"{test_path}: the {config.split} split holds no samples{failed}; nothing to attack")
    n_classes = target.cfg.num_classes
    if len(info.classes) != n_classes:
        raise AttackError(f"{config.checkpoint}: model has {n_classes} classes but {test_path} has "
                          f"{len(info.classes)}")
    if source_model is not None and source_model.cfg.num_classes != n_classes:
        raise AttackError(f"{config.source}: source model has {source_model.cfg.num_classes} classes, "
                          f"target {n_classes}")
    for path, model in ((config.checkpoint, target), (config.source, source_model)):
        if model is not None and (info.height, info.width) != (model.cfg.input_size, model.cfg.input_size):
            raise AttackError(f"{path}: the model takes {model.cfg.input_size}x{model.cfg.input_size} frames but "
                              f"{test_path} holds {info.height}x{info.width} frames; expected a cache framed at "
                              f"the model's size")
    return test_path, info, protocol


def _write(result: AttackResult, config: Config, out: Path) -> None:
    """attack.md (header + table), robust_vs_eps.png (several ε) and attack.json (the result with its table)."""
    import json

    from dvsguard.atomic import write_text
    from dvsguard.units import eps_label

    paths = {"json": out / "attack.json", "md": out / "attack.md"}
    if len(result.eps) > 1:
        from dvsguard.analyze.figures import robust_vs_eps_figure, save_png

        paths["png"] = save_png(robust_vs_eps_figure(result.results, result.eps), out / "robust_vs_eps.png")
    result.paths = {k: str(v) for k, v in paths.items()}
    members = result.members
    header = (
        f"# Robust accuracy (%) of {Path(config.checkpoint).name}\n\n"
        f"{result.n_samples} samples of {Path(result.cache).name}; ε = {', '.join(eps_label(e) for e in result.eps)}; "
        f"{'ensemble over ' + ', '.join(members) if members else 'no ensemble'}"
        f"{'; black box source ' + Path(config.source).name if config.source is not None else ''}; "
        f"seed {result.seed}; protocol {result.protocol}, clamp {result.clamp}, PGD step {result.pgd_alpha}.\n\n"
    )
    write_text(paths["md"], header + result.table + "\n")
    doc = {k: v for k, v in {**result.to_json(), "table": result.table}.items() if k != "rank"}
    write_text(paths["json"], json.dumps(doc, indent=2, default=str) + "\n")
