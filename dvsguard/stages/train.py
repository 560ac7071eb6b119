"""train: a spiking VGG with a defense; checkpoints every epoch, resumable, DDP under ``torchrun``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvsguard.errors import ConfigError
from dvsguard.protocol import PROTOCOLS
from dvsguard.stages.base import SEED_MAX, Result, check_output, option

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``dvsguard train``; the defaults equal :class:`dvsguard.train.trainer.TrainConfig`'s."""

    cache: Path = option(help="Train-split frame cache (.h5); the test split is found beside it.", wired=True)
    defense: str = option(help="vanilla, sr, fgsm-at, pgd-at, sr-star, rat or event-at (adversarial training with "
                               "events inserted and deleted).")
    out: Path = option(help="Run folder: last.pt, best.pt, metrics.jsonl, config.json.", wired=True)
    preset: str = option("small", "Model preset: vgg11 (paper), vgg11-loihi, vgg11-chip (one Loihi 2 chip), vgggesture, small, tiny.")
    epochs: int = option(200, "Epochs (the cosine schedule spans them).", min=1)
    batch: int = option(24, "Batch size (per process under torchrun).", min=1)
    lr: float = option(0.1, "Initial learning rate (about 1e-3 for adam).", above=0.0)
    momentum: float = option(0.9, "SGD momentum.", min=0.0, max=1.0)
    optimizer: str = option("sgd", "sgd (the paper's, momentum 0.9) or adam (short runs).", choices=("sgd", "adam"))
    weight_decay: float | None = option(None, "L2 weight decay (default 5e-4; 0 for rat).", min=0.0)
    lam: float | None = option(None, "SR weight λ (default 0.002).", min=0.0)
    sr_form: str = option("sq", "SR term: sq = mean squared difference quotient (released code), abs = Eq. 14.",
                          choices=("sq", "abs"))
    h: float = option(0.01, "SR finite-difference step h, frame units.", kind="eps")
    eps: float = option(2 / 255, "Adversarial-training and robust-check ε, frame units, e.g. 2/255.", kind="eps")
    attack: str = option("fgsm", "sr-star's adversary: fgsm, pgd or events (event-at's).",
                         choices=("fgsm", "pgd", "events"))
    pgd_steps: int = option(5, "PGD steps k (pgd-at, sr-star with attack pgd).", min=1)
    pgd_alpha: float | None = option(None, "PGD step α, frame units (default 2.5·ε/k; paper protocol: 0.01 for "
                                           "pgd-at, 1/255 for rat).", kind="eps")
    beta: float = option(5e-4, "RAT's Parseval retraction strength.", min=0.0)
    event_budget: int = option(32, "Event adversary (event-at, sr-star --attack events): events inserted plus "
                                   "deleted per training example.", min=1)
    step_events: int = option(16, "Event adversary: events changed per greedy step (top-k bins).", min=1)
    seed: int = option(0, "Seed of initialisation, data order, augmentation and PGD starts.", min=0, max=SEED_MAX)
    augment: bool = option(True, "Augment training frames (the protocol's: crop and flip, or paper's NDA).")
    limit_train: int | None = option(None, "Train on a fixed seeded subset of N samples.", min=1)
    limit_test: int | None = option(None, "Evaluate on a fixed seeded subset of N test samples.", min=1)
    robust_limit: int = option(256, "Test samples of the per-epoch FGSM check (0: off).", min=0)
    workers: int = option(0, "DataLoader worker processes.", min=0)
    threads: int | None = option(None, "Intra-op CPU threads per process (default: torch's choice).", min=1)
    device: str = option("auto", "auto (GPU if present), cpu, cuda or cuda:N.")
    amp: bool = option(False, "bf16 autocast for convolutions and linear layers.")
    resume: bool = option(False, "Continue the run in --out from its last checkpoint.", wired=True)
    overwrite: bool = option(False, "Replace an earlier run in --out (kept in --out/previous/ until the new run's "
                                    "first checkpoint is written).", wired=True)
    init: Path | None = option(None, "Start from this trained checkpoint's weights (same preset and data).",
                               wired=True)
    fixed_point: bool = option(False, "Fine-tune --init in Loihi 2 fixed point: the model trained is the integer "
                                      "network `export` writes.")
    protocol: str | None = option(None, "events or paper (default: the cache's; must agree with it).",
                                  choices=PROTOCOLS, wired=True)

    def train_config(self) -> Any:
        """The :class:`~dvsguard.train.trainer.TrainConfig` (what determines the result) of these options."""
        from dvsguard.train.trainer import TrainConfig

        run_only = {"out", "workers", "threads", "device", "resume", "overwrite"}
        values = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in run_only}
        values["cache"] = str(self.cache)
        values["init"] = str(self.init) if self.init is not None else None
        return TrainConfig(**values)


@dataclass
class TrainResult(Result):
    """The run folder's files, the protocol trained under and the accuracies reached (fractions in [0, 1])."""

    out_dir: str
    last: str
    best: str
    metrics: str
    config: str
    defense: str
    protocol: str
    epochs: int
    resumed_from: int | None
    best_test_acc: float
    best_epoch: int
    final: dict[str, Any]
    world: int
    device: str
    seconds: float
    rank: int = 0

    def summary(self) -> str:
        return (f"trained {self.defense} for {self.epochs} epoch(s): best clean test acc {self.best_test_acc:.4f} "
                f"(epoch {self.best_epoch})\nlast: {self.last}\nbest: {self.best}")


def check(config: Config) -> None:
    """Refuse settings the trainer would refuse (defense, optimizer, preset, …) before anything runs."""
    from dvsguard.snn.vgg import VGGConfig

    config.train_config()
    VGGConfig.preset(config.preset)
    if uses_event_examples(config) and config.protocol == "paper":
        raise ConfigError(f"defense {config.defense!r} with event examples needs frames of capped event counts; the "
                          f"paper protocol's frames are resized counts (use the events protocol)")
    check_output(config.out, "--out", folder=True)


def uses_event_examples(config: Config) -> bool:
    """Whether the defense trains on event-realisable examples (``event-at``, ``sr-star`` with ``attack events``)."""
    return config.defense == "event-at" or (config.defense == "sr-star" and config.attack == "events")


def budget_notes(config: Config) -> list[str]:
    """The defense's budgets (ε of the adversary, h of SR) in events and in the other protocol's unit."""
    from dvsguard.data.cache import open_cache
    from dvsguard.units import budget_note

    info = open_cache(config.cache)
    events = uses_event_examples(config)
    budgets = []
    if config.defense in ("fgsm-at", "pgd-at", "sr-star", "rat") and not events:
        budgets.append(("training ε", config.eps))
    if config.defense in ("sr", "sr-star"):
        budgets.append(("SR step h", config.h))
    notes = [budget_note(what, value, info.protocol, info.count_cap, info.sensor_size, (info.height, info.width))
             for what, value in budgets]
    if events:
        notes.append(f"training event budget = {config.event_budget} events inserted plus deleted per example, "
                     f"{config.step_events} per greedy step")
    return notes


def run(config: Config) -> TrainResult:
    """Train (or resume) into ``config.out``; logs the budgets in events and in the other protocol's unit."""
    from dvsguard.train.trainer import train

    check_output(config.out, "--out", folder=True)
    for note in budget_notes(config):
        log.info("%s", note)
    done = train(config.train_config(), config.out, resume=config.resume, workers=config.workers,
                 device=config.device, threads=config.threads, overwrite=config.overwrite)
    return TrainResult(**done)
