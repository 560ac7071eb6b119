"""deployed: export a checkpoint to lava-dl netx and measure the integer network's robust accuracy against event budgets.

The two steps of ``dvsguard export CKPT --out OUT`` and ``dvsguard attack CKPT --threat events
--netx OUT/NAME.net --out OUT`` in one: the robustness of what is deployed on Loihi (events
inserted or deleted per sample, success judged on :func:`dvsguard.export.intsim.simulate`), with
the float model's prediction on the same adversarial frames beside it (``float_disagreement``).
A pipeline runs it for every attacked model when its ``[attack]`` section sets ``event_budgets``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvsguard.stages.base import SEED_MAX, Result, check_output, option

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``dvsguard deployed``."""

    checkpoint: Path = option(help="Checkpoint of the model to deploy (.pt).", argument=True, wired=True)
    cache: Path = option(help="A frame cache (.h5) of the dataset; its --split sibling is attacked.", wired=True)
    split: str = option("test", "Which split of the cache to attack.", choices=("train", "test"))
    event_budgets: tuple[int, ...] = option((8, 32, 128), "Events inserted plus deleted per sample (L1 of the count "
                                            "change), one point of the curve each.", kind="list", min=0)
    event_attacks: tuple[str, ...] = option(("clean", "greedy", "random"), "Events threat: comma list of clean, "
                                            "greedy (gradient top-k), random (same budget).", kind="list")
    event_limit: int | None = option(None, "Attack a fixed seeded subset of N samples.", min=1)
    step_events: int = option(8, "Events threat: events changed per greedy step (top-k bins).", min=1)
    per_bin_cap: int | None = option(None, "Events threat: at most N events changed per frame bin (pixel, "
                                           "polarity, time bin).", min=1)
    insert_only: bool = option(False, "Events threat: only insert events (no deletions).")
    ensemble: bool = option(True, "Fooled if any of the gradient modes triangle:1, sigmoid:4, atan:2, rga fools "
                                  "the model.")
    modes: tuple[str, ...] | None = option(None, "Ensemble gradient modes instead of the paper's four, e.g. "
                                           "triangle:0.5,rga; grid = 30 triangle widths γ 0.1…3.0.", kind="list")
    batch: int = option(64, "Samples per batch.", min=1)
    seed: int = option(0, "Seed of the random events and of the --event-limit subset.", min=0, max=SEED_MAX)
    protocol: str | None = option(None, "events (default: the checkpoint's; the paper protocol's resized counts "
                                        "are refused).", choices=("events", "paper"), wired=True)
    out: Path | None = option(None, "Folder for NAME.net, NAME.json (manifest), attack_events.json and .md "
                                    "(default: the checkpoint's).", wired=True)
    name: str | None = option(None, "Stem of the netx file (default: from the checkpoint's path).", wired=True)


@dataclass
class DeployedResult(Result):
    """The exported network (``net``, ``manifest``) and the event attack judged on it.

    ``events`` is the event attack's result (:class:`dvsguard.stages.event_attack.EventAttackResult`
    as JSON): rows of attack, budget (events per sample), accuracy (0..1) of the integer network and
    float_disagreement (share of samples whose adversarial frames the float model classifies
    differently).
    """

    net: str
    manifest: str
    events: dict[str, Any]
    table: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_json().items() if k != "table"}

    def summary(self) -> str:
        return f"{self.table}\n\nnetx: {self.net}\nwritten: {', '.join(self.events['paths'].values())}"


def attack_config(config: Config, net: Path | None) -> Any:
    """The ``dvsguard attack --threat events`` Config that judges ``config``'s attacks on ``net``."""
    from dvsguard.stages import attack

    return attack.Config(checkpoint=config.checkpoint, cache=config.cache, split=config.split, threat="events",
                         event_attacks=config.event_attacks, budget=config.event_budgets,
                         per_bin_cap=config.per_bin_cap, insert_only=config.insert_only,
                         step_events=config.step_events, ensemble=config.ensemble, modes=config.modes,
                         limit=config.event_limit, batch=config.batch, seed=config.seed, protocol=config.protocol,
                         netx=net, out=config.out)


def check(config: Config) -> None:
    """Refuse an empty curve, the paper protocol, unknown attack names and gradient modes, and an --out that is a file."""
    from dvsguard.errors import ConfigError
    from dvsguard.stages import attack

    if not config.event_budgets:
        raise ConfigError("--event-budgets: give at least one budget (events per sample)")
    if config.protocol == "paper":
        raise ConfigError("--protocol paper: the paper protocol's frames are resized raw counts, not events; the "
                          "event curve needs the events protocol")
    attack.check(attack_config(config, None))


def run(config: Config) -> DeployedResult:
    """Export ``checkpoint`` to ``out`` (no Lava run), then attack its integer network with every budget."""
    from dvsguard.export.exporter import export_checkpoint
    from dvsguard.stages import event_attack

    check(config)
    out = Path(config.out) if config.out is not None else Path(config.checkpoint).parent
    exported, _, _ = export_checkpoint(config.checkpoint, out, config.name)
    log.info("exported %s; attacking its integer network", exported.net_path)
    events = event_attack.run(attack_config(config, Path(exported.net_path)))
    return DeployedResult(net=str(exported.net_path), manifest=str(exported.manifest_path), events=events.to_json(),
                          table=events.table)
