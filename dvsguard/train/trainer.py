"""The training loop: SGD + cosine schedule, one defense, per-epoch evaluation, resumable checkpoints.

Per epoch: train loss/accuracy (on the batches the defense trained on), clean test accuracy and
a cheap robust check (FGSM at the training ε on the first ``robust_limit`` test samples), logged
to ``RUN_DIR/metrics.jsonl`` and the console. ``RUN_DIR/last.pt`` is written atomically at the
end of every epoch with everything needed to go on (model, optimizer, scheduler, RNG states,
history); ``RUN_DIR/best.pt`` holds the model of the best clean test accuracy.

Resume is at epoch granularity: a killed run restarts the interrupted epoch from the last
end-of-epoch checkpoint. An epoch's batches, augmentation and PGD starts depend only on
``(seed, epoch)`` and the restored generator states, so the resumed run reaches the same
weights as an uninterrupted one (on CPU, with the same number of processes, threads and
DataLoader workers: the data stage draws augmentation per worker).

With ``init`` a run starts from a trained checkpoint's weights; with ``fixed_point`` as well
it fine-tunes that model in Loihi 2 fixed point (:mod:`dvsguard.train.finetune`), and its
checkpoints hold on-grid weights plus the per-layer scales the exporter reuses.

The protocol (:mod:`dvsguard.protocol`) is the cache's; ``protocol`` in the config must agree
with it when given. It selects the augmentation (``crop-flip`` or ``nda``), the Linear
initialisation, the range adversarial examples are clamped to (the cache's value range, or
[0, 1] under ``paper`` as torchattacks did, also for the per-epoch FGSM check), PGD-AT's
default step and RAT's form; it is recorded as ``data.protocol`` in every checkpoint and in
``config.json``.

Frames are ``[T, B, 2, H, W]`` float in the cache's value range; ε in frame units.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dvsguard.atomic import remove_stale, write_text
from dvsguard.attack import fgsm
from dvsguard.data.cache import CacheInfo, open_cache, split_path
from dvsguard.data.dataset import make_loader
from dvsguard.errors import CheckpointError, ConfigError, TrainError
from dvsguard.progress import track
from dvsguard.protocol import DEFAULT_PROTOCOL, Protocol, inherit
from dvsguard.protocol import get as get_protocol
from dvsguard.snn.checkpoint import load_checkpoint, model_payload, save_checkpoint
from dvsguard.snn.fixed_point import FixedPointSpec
from dvsguard.snn.vgg import SpikingVGG, VGGConfig
from dvsguard.train import distributed as dist_utils
from dvsguard.train import finetune, rng
from dvsguard.train.defenses import (
    ADVERSARY_KINDS,
    DEFAULT_BETA,
    DEFAULT_EPS,
    DEFAULT_EVENT_BUDGET,
    DEFAULT_H,
    DEFAULT_TRAIN_STEP_EVENTS,
    DEFENSES,
    make_defense,
    unwrap,
)
from dvsguard.train.distributed import Context, EpochSampler
from dvsguard.train.losses import SR_FORMS
from dvsguard.train.optimizer import OPTIMIZERS, make_optimizer

log = logging.getLogger(__name__)

LAST, BEST, METRICS, CONFIG = "last.pt", "best.pt", "metrics.jsonl", "config.json"
RUN_FILES = (LAST, BEST, METRICS, CONFIG)
PREVIOUS = "previous"  # where --overwrite keeps the replaced run until the new one has a checkpoint
TRAINER_FORMAT = "dvsguard-trainer/1"
DEFAULT_WEIGHT_DECAY = 5e-4

# settings that may change between a run and its resumption: the cache may move (its key is checked)
_RESUMABLE_CHANGES = ("cache",)
# settings added after runs were first recorded: a run without one was trained as its value says
_ADDED_SETTINGS = {"protocol": DEFAULT_PROTOCOL, "event_budget": DEFAULT_EVENT_BUDGET,
                   "step_events": DEFAULT_TRAIN_STEP_EVENTS}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result.

    Attributes:
        cache: the train-split frame cache (the test split is its sibling).
        defense: one of ``vanilla``, ``sr``, ``fgsm-at``, ``pgd-at``, ``sr-star``, ``rat``, ``event-at``.
        preset: model preset of :meth:`VGGConfig.preset` (``vgg11`` is the paper's).
        epochs, batch, lr, momentum: the optimizer's settings; a cosine schedule spans ``epochs``.
        optimizer: ``sgd`` (the paper's: momentum, weight decay) or ``adam`` (Adam with L2 weight
            decay; converges in fewer epochs, for short runs such as the quickstart; lr ~1e-3).
        weight_decay: ``None`` → 5e-4 (0 for ``rat``, whose retraction replaces it).
        lam, sr_form, h: SR weight (``None`` → 0.002), form (``sq``/``abs``) and step.
        eps: adversarial-training ε and robust-check ε, frame units.
        attack: ``fgsm``/``pgd``/``events`` for ``sr-star``; pgd_steps, pgd_alpha for PGD (α default 2.5ε/k).
        event_budget, step_events: the event adversary's budget (events inserted plus deleted per
            example) and events changed per greedy step (``event-at``, ``sr-star`` with ``events``).
        beta: RAT's Parseval retraction strength.
        seed: seeds model init, data order, augmentation and PGD starts.
        augment: random crop + flip from the data stage.
        limit_train, limit_test: use a fixed seeded subset of that many samples.
        robust_limit: test samples of the per-epoch FGSM check (0 disables it).
        amp: bf16 autocast for convolutions/linear layers (membrane state stays float32).
        init: start from this trained checkpoint's weights (same preset, data and protocol)
            instead of a random initialisation.
        protocol: ``events`` or ``paper``; ``None`` → the cache's (the trainer records the
            resolved name). Under ``paper`` PGD-AT's α defaults to 0.01 and RAT is SNN-RAT's
            (PGD at α 1/255 with a random start, sampled-row retraction).
        fixed_point: fine-tune ``init`` in Loihi 2 fixed point (:mod:`dvsguard.train.finetune`):
            the model trained is the integer network the exporter writes.
    """

    cache: str
    defense: str = "vanilla"
    preset: str = "small"
    epochs: int = 200
    batch: int = 24
    lr: float = 0.1
    momentum: float = 0.9
    optimizer: str = "sgd"
    weight_decay: float | None = None
    lam: float | None = None
    sr_form: str = "sq"
    h: float = DEFAULT_H
    eps: float = DEFAULT_EPS
    attack: str = "fgsm"
    pgd_steps: int = 5
    pgd_alpha: float | None = None
    beta: float = DEFAULT_BETA
    event_budget: int = DEFAULT_EVENT_BUDGET
    step_events: int = DEFAULT_TRAIN_STEP_EVENTS
    seed: int = 0
    augment: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    robust_limit: int = 256
    amp: bool = False
    init: str | None = None
    fixed_point: bool = False
    protocol: str | None = None

    def __post_init__(self) -> None:
        if self.protocol is not None:
            get_protocol(self.protocol, "train protocol")
        if self.defense not in DEFENSES:
            raise ConfigError(f"defense {self.defense!r} is unknown; expected one of {', '.join(DEFENSES)}")
        positive = {"epochs": self.epochs, "batch": self.batch, "pgd_steps": self.pgd_steps,
                    "event_budget": self.event_budget, "step_events": self.step_events}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is unknown; expected one of {', '.join(OPTIMIZERS)}")
        if not self.eps > 0:
            raise ConfigError(f"eps must be > 0 (frame units), got {self.eps}")
        if self.sr_form not in SR_FORMS:
            raise ConfigError(f"sr_form {self.sr_form!r} is unknown; expected one of {', '.join(SR_FORMS)}")
        if self.attack not in ADVERSARY_KINDS:
            raise ConfigError(f"attack {self.attack!r} is unknown; expected one of {', '.join(ADVERSARY_KINDS)}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.robust_limit < 0:
            raise ConfigError(f"robust_limit must be >= 0, got {self.robust_limit}")
        if self.fixed_point and not self.init:
            raise ConfigError("fixed-point training fine-tunes a trained model: give its checkpoint as init (--init CKPT)")
        if self.fixed_point and self.amp:
            raise ConfigError("fixed-point training runs in float32: bf16 autocast (--amp) would blur its thresholds")

    @property
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.0 if self.defense == "rat" else DEFAULT_WEIGHT_DECAY

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"train config: unknown setting(s) {', '.join(unknown)}")
        return cls(**d)


@dataclass
class EpochStats:
    """Sums over an epoch's training batches of one process."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    steps: int = 0
    term_sums: dict[str, float] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------ small utilities


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + salt) % (2**62)


def _build_model(cfg: TrainConfig, info: CacheInfo, protocol: Protocol) -> SpikingVGG:
    if info.height != info.width:
        raise ConfigError(f"{info.path}: frames are {info.height}×{info.width}; the model needs square frames")
    vgg = VGGConfig.preset(cfg.preset, num_classes=len(info.classes), input_size=info.height, in_channels=2,
                           linear_init=protocol.linear_init)
    return SpikingVGG(vgg, autocast_bf16=cfg.amp)


def _cache_protocol(info: CacheInfo) -> str:
    """The protocol a cache was built under (caches from before protocols were recorded: ``events``)."""
    return getattr(info, "protocol", DEFAULT_PROTOCOL)


def attack_range(protocol: Protocol, info: CacheInfo) -> tuple[float, float]:
    """The range training's adversarial examples are clamped to: the cache's value range
    (``clamp`` ``data``) or [0, 1] (``unit``: torchattacks', whatever the data's range)."""
    if protocol.clamp == "unit":
        return (0.0, 1.0)
    return (float(info.value_range[0]), float(info.value_range[1]))


def _data_entry(info: CacheInfo, protocol: Protocol) -> dict[str, Any]:
    return {
        "framing": dict(info.framing),
        "classes": list(info.classes),
        "value_range": [float(v) for v in info.value_range],
        "cache": str(Path(info.path).resolve()),
        "cache_key": info.key,
        "protocol": protocol.name,
    }


def _check_finite_weights(model: nn.Module, epoch: int) -> None:
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise TrainError(f"epoch {epoch}: weight {name!r} became nan/inf; training stopped")


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def _clean_counts(model: nn.Module, loader: Any, device: torch.device) -> tuple[float, float]:
    correct = total = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += float((model(x).argmax(1) == y).sum())
        total += y.numel()
    return correct, total


def _robust_counts(model: nn.Module, loader: Any, device: torch.device, eps: float,
                   value_range: tuple[float, float]) -> tuple[float, float]:
    correct = total = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        x_adv = fgsm(model, x, y, eps, value_range)
        with torch.no_grad():
            correct += float((model(x_adv).argmax(1) == y).sum())
        total += y.numel()
    return correct, total


def evaluate(model: nn.Module, cfg: TrainConfig, test_path: Path, test_n: int, value_range: tuple[float, float],
             ctx: Context, workers: int = 0) -> dict[str, float]:
    """Clean accuracy on the (limited) test split and FGSM accuracy on its first ``robust_limit`` samples.

    Each rank evaluates a disjoint share; the counts are summed over ranks.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        sampler = EpochSampler(test_n, seed=cfg.seed, shuffle=False, limit=cfg.limit_test,
                               rank=ctx.rank, world=ctx.world, pad=False, where=test_path)
        loader = make_loader(test_path, cfg.batch, shuffle=False, augment=False, num_workers=workers, sampler=sampler)
        correct, total = _clean_counts(net, loader, ctx.device)
        r_correct = r_total = 0.0
        if cfg.robust_limit > 0:
            rsampler = EpochSampler(test_n, seed=cfg.seed, shuffle=False, limit=min(cfg.robust_limit, test_n),
                                    rank=ctx.rank, world=ctx.world, pad=False, where=test_path)
            rloader = make_loader(test_path, cfg.batch, shuffle=False, augment=False, num_workers=workers,
                                  sampler=rsampler)
            r_correct, r_total = _robust_counts(net, rloader, ctx.device, cfg.eps, value_range)
        correct, total, r_correct, r_total = dist_utils.all_sum([correct, total, r_correct, r_total], ctx)
    finally:
        net.train(was_training)
    out = {"test_acc": correct / max(total, 1.0), "test_n": int(total)}
    if cfg.robust_limit > 0:
        out.update(robust_acc=r_correct / max(r_total, 1.0), robust_n=int(r_total))
    return out


# ------------------------------------------------------------------------------ the run


class Trainer:
    """One training run in ``out_dir`` (use :func:`train`)."""

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, *, workers: int = 0, device: str = "auto",
                 ctx: Context | None = None, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.workers = workers
        self.overwrite = overwrite
        self.ctx = ctx or dist_utils.setup(device)
        self.info = open_cache(cfg.cache)
        self.test_path = split_path(self.info, "test")
        self.test_info = open_cache(self.test_path)
        if self.test_info.classes != self.info.classes or self.test_info.n_frames != self.info.n_frames:
            raise ConfigError(f"{self.test_path}: test split does not match {self.info.path} (classes or frames differ)")
        self.protocol = inherit(cfg.protocol, _cache_protocol(self.info), str(self.info.path))
        if _cache_protocol(self.test_info) != self.protocol.name:
            raise ConfigError(f"{self.test_path}: test split was made under protocol {_cache_protocol(self.test_info)!r}, "
                              f"{self.info.path} under {self.protocol.name!r}")
        cfg = self.cfg = dataclasses.replace(cfg, protocol=self.protocol.name)
        self.value_range = attack_range(self.protocol, self.info)
        if self.ctx.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        rng.seed_everything(cfg.seed)  # the same model initialisation on every rank
        self.model = _build_model(cfg, self.info, self.protocol)
        self.fixed: FixedPointSpec | None = None
        if cfg.init:
            init_payload = finetune.load_init(self.model, cfg.init, self.info, self.protocol.name)
            if cfg.fixed_point:
                self.fixed = finetune.to_fixed_point(self.model, init_payload, self.info)
        self.model.to(self.ctx.device)
        rng.seed_everything(_epoch_seed(cfg.seed, -1, 1 + self.ctx.rank))
        self.generators = {"attack": torch.Generator().manual_seed(_epoch_seed(cfg.seed, -1, 101 + self.ctx.rank))}
        sampled_rat = cfg.defense == "rat" and self.protocol.rat == "paper"
        if sampled_rat:  # the retracted rows: the same draws on every rank keep the replicas equal
            self.generators["rat_rows"] = torch.Generator().manual_seed(_epoch_seed(cfg.seed, -1, 301))
        self.defense = make_defense(
            cfg.defense, eps=cfg.eps, lam=cfg.lam, sr_form=cfg.sr_form, h=cfg.h, attack=cfg.attack,
            pgd_steps=cfg.pgd_steps, pgd_alpha=cfg.pgd_alpha, beta=cfg.beta,
            value_range=self.value_range, generator=self.generators["attack"],
            pgd_at_alpha=self.protocol.pgd_at_alpha, rat=self.protocol.rat,
            row_generator=self.generators.get("rat_rows"), count_cap=self.info.count_cap,
            event_budget=cfg.event_budget, step_events=cfg.step_events,
        )
        wd = cfg.resolved_weight_decay
        if wd and not self.defense.weight_decay_allowed:
            raise ConfigError(f"defense {cfg.defense!r} trains without weight decay; got weight_decay={wd}")
        self.optimizer = make_optimizer(self.model.parameters(), cfg.optimizer, cfg.lr, cfg.momentum, wd)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        self.history: list[dict[str, Any]] = []
        self.best_acc = -1.0
        self.best_epoch = 0
        self.start_epoch = 0
        self.resumed_from: int | None = None
        self.wrapped: nn.Module = self.model
        if self.ctx.distributed:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # --- checkpoints ---

    def _payload(self, epoch: int, metrics: dict[str, Any], rng_states: list[dict[str, Any]] | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model_payload(self.model),
            "data": _data_entry(self.info, self.protocol),
            "train": {**self.cfg.to_dict(), "weight_decay": self.cfg.resolved_weight_decay},
            "epoch": epoch,
            "metrics": dict(metrics),
        }
        if self.fixed is not None:
            payload.update(finetune.checkpoint_entries(self.model, self.fixed))
        if rng_states is not None:
            payload["trainer"] = {
                "format": TRAINER_FORMAT,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_states,
                "world": self.ctx.world,
                "workers": self.workers,
                "history": list(self.history),
                "best_acc": self.best_acc,
                "best_epoch": self.best_epoch,
            }
            if self.fixed is not None:
                payload["trainer"]["latent_state"] = finetune.latent_state(self.model)
        return payload

    def _gather_rng(self) -> list[dict[str, Any]]:
        state = rng.capture(self.generators)
        if not self.ctx.distributed:
            return [state]
        import torch.distributed as dist

        states: list[Any] = [None] * self.ctx.world
        dist.all_gather_object(states, state)
        return states

    def _check_resumable(self, payload: dict[str, Any], path: Path) -> None:
        saved = {**_ADDED_SETTINGS, **payload.get("train", {})}
        mine = {**self.cfg.to_dict(), "weight_decay": self.cfg.resolved_weight_decay}
        for key, value in mine.items():
            if key in _RESUMABLE_CHANGES:
                continue
            if key not in saved or saved[key] != value:
                raise ConfigError(
                    f"{path}: cannot resume with {key}={value!r}; the run was started with {key}={saved.get(key)!r}"
                )
        saved_key = payload.get("data", {}).get("cache_key")
        if saved_key != self.info.key:
            raise ConfigError(f"{path}: the run was trained on another cache (key {saved_key}, {self.info.path} has {self.info.key})")
        trainer = payload.get("trainer")
        if not isinstance(trainer, dict) or trainer.get("format") != TRAINER_FORMAT:
            raise CheckpointError(f"{path}: holds no trainer state to resume from")
        if trainer.get("world") != self.ctx.world:
            raise ConfigError(
                f"{path}: the run used {trainer.get('world')} process(es); resume it with the same number, not {self.ctx.world}"
            )

    def resume(self) -> bool:
        """Load ``last.pt`` if it exists; returns whether a run was resumed."""
        path = self.out / LAST
        if not path.exists():
            log.info("no %s to resume from: starting a new run", path)
            return False
        payload = load_checkpoint(path, map_location="cpu")
        self._check_resumable(payload, path)
        trainer = payload["trainer"]
        if self.cfg.augment and trainer.get("workers") != self.workers:
            log.warning("%s: the run used %s DataLoader worker(s), now %d: augmentation draws depend on it, so the "
                        "resumed run will not repeat an uninterrupted one exactly", path, trainer.get("workers"), self.workers)
        self.model.load_state_dict(trainer.get("latent_state", payload["model"]["state_dict"]))
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        rng.restore(trainer["rng"][self.ctx.rank], self.generators)
        self.history = list(trainer["history"])
        self.best_acc = float(trainer["best_acc"])
        self.best_epoch = int(trainer["best_epoch"])
        self.start_epoch = int(payload["epoch"])
        self.resumed_from = self.start_epoch
        if self.ctx.is_main:  # the metrics file says what the checkpoint says, nothing after it
            write_text(self.out / METRICS, "".join(json.dumps(m) + "\n" for m in self.history))
        log.info("resuming %s after epoch %d of %d", self.out, self.start_epoch, self.cfg.epochs)
        return True

    def _start_fresh(self) -> None:
        """Begin a new run in ``out``. An earlier run there is refused, or with ``overwrite`` moved
        to ``out/previous/`` (removed once the new run's first checkpoint exists)."""
        earlier = [name for name in RUN_FILES if (self.out / name).exists()]
        refused = earlier and not self.overwrite
        dist_utils.barrier(self.ctx)  # every rank has looked before rank 0 writes the new run's files
        if refused:
            raise TrainError(f"{self.out}: holds an earlier run ({', '.join(earlier)}); pass --resume to continue it "
                             f"or --overwrite to replace it")
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        previous = self.out / PREVIOUS
        if earlier and previous.is_dir() and not any((self.out / n).exists() for n in (LAST, BEST)):
            for name in earlier:  # an attempt that wrote no checkpoint: previous/ still holds the run it replaces
                (self.out / name).unlink()
        elif earlier:
            shutil.rmtree(previous, ignore_errors=True)
            previous.mkdir()
            for name in earlier:
                os.replace(self.out / name, previous / name)
            log.warning("%s: the earlier run is kept in %s until this run's first checkpoint is written", self.out, previous)
        write_text(self.out / METRICS, "")

    # --- the loop ---

    def _train_epoch(self, epoch: int) -> EpochStats:
        cfg, ctx = self.cfg, self.ctx
        sampler = EpochSampler(self.info.n_samples, seed=cfg.seed, shuffle=True, limit=cfg.limit_train,
                               rank=ctx.rank, world=ctx.world, where=cfg.cache)
        sampler.set_epoch(epoch)
        loader = make_loader(cfg.cache, cfg.batch, shuffle=False, augment=cfg.augment,
                             seed=_epoch_seed(cfg.seed, epoch, 1 + ctx.rank), num_workers=self.workers, sampler=sampler,
                             augmentation=self.protocol.augment)
        self.wrapped.train()
        stats = EpochStats()
        use_cuda_amp = cfg.amp and ctx.device.type == "cuda"
        n_batches = math.ceil(len(sampler) / cfg.batch)
        for step, (x, y) in enumerate(track(loader, f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches), start=1):
            x = x.to(ctx.device, non_blocking=True)
            y = y.to(ctx.device, non_blocking=True)
            amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda_amp else nullcontext()
            with amp:
                loss, logits = self.defense.loss(self.wrapped, x, y)
            bad = not bool(torch.isfinite(loss.detach()))
            if dist_utils.any_rank(bad, ctx):
                value = float(loss.detach()) if bad else "nan/inf on another rank"
                kept = f"the last good checkpoint {self.out / LAST} is kept" if (self.out / LAST).exists() else "no checkpoint was written yet"
                raise TrainError(f"epoch {epoch + 1} step {step}: loss is {value} (defense {cfg.defense}); training stopped, {kept}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.defense.after_step(self.model)
            stats.loss_sum += float(loss.detach()) * y.numel()
            stats.correct += float((logits.detach().argmax(1) == y).sum())
            stats.seen += y.numel()
            stats.steps += 1
            for name, value in self.defense.last_terms.items():
                stats.term_sums[name] = stats.term_sums.get(name, 0.0) + float(value) * y.numel()
        return stats

    def run(self, resume: bool = False) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        started = time.perf_counter()
        if ctx.is_main and self.out.is_dir():  # temporaries of a writer killed mid-checkpoint
            for stale in remove_stale(self.out, RUN_FILES):
                log.info("%s: removed a temporary file left by an interrupted write", stale)
        if not (resume and self.resume()):
            self._start_fresh()
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / CONFIG, json.dumps(
                {"train": {**cfg.to_dict(), "weight_decay": cfg.resolved_weight_decay},
                 "data": _data_entry(self.info, self.protocol), "protocol": self.protocol.to_dict(),
                 "model": self.model.cfg.to_dict(),
                 "world": ctx.world, "device": str(ctx.device), "workers": self.workers}, indent=2) + "\n")
        dist_utils.barrier(ctx)
        if self.start_epoch >= cfg.epochs:
            log.info("%s: all %d epochs are done already", self.out, cfg.epochs)
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            stats = self._train_epoch(epoch)
            self.scheduler.step()
            _check_finite_weights(self.model, epoch + 1)
            term_names = sorted(stats.term_sums)
            loss_sum, correct, seen, *term_sums = dist_utils.all_sum(
                [stats.loss_sum, stats.correct, stats.seen, *(stats.term_sums[n] for n in term_names)], ctx)
            train_seconds = time.perf_counter() - t0
            metrics: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": loss_sum / max(seen, 1.0),
                "train_acc": correct / max(seen, 1.0),
                "train_n": int(seen),
                **{f"train_{n}": v / max(seen, 1.0) for n, v in zip(term_names, term_sums)},
            }
            metrics.update(evaluate(self.wrapped, cfg, self.test_path, self.test_info.n_samples,
                                    self.value_range, ctx, self.workers))
            metrics.update(train_seconds=round(train_seconds, 3), seconds=round(time.perf_counter() - t0, 3))
            improved = metrics["test_acc"] > self.best_acc
            if improved:
                self.best_acc, self.best_epoch = metrics["test_acc"], epoch + 1
            metrics["best_test_acc"] = self.best_acc
            self.history.append(metrics)
            rng_states = self._gather_rng()
            if ctx.is_main:
                save_checkpoint(self.out / LAST, self._payload(epoch + 1, metrics, rng_states))
                if improved:
                    save_checkpoint(self.out / BEST, self._payload(epoch + 1, metrics, None))
                _append_line(self.out / METRICS, metrics)
                shutil.rmtree(self.out / PREVIOUS, ignore_errors=True)  # the new run now has its checkpoints
                robust = f" fgsm {metrics['robust_acc']:.3f}" if "robust_acc" in metrics else ""
                log.info("epoch %d/%d loss %.4f acc %.3f test %.3f%s lr %.4g (%.1fs)", epoch + 1, cfg.epochs,
                         metrics["train_loss"], metrics["train_acc"], metrics["test_acc"], robust, lr, metrics["seconds"])
            dist_utils.barrier(ctx)
        final = self.history[-1] if self.history else {}
        return {
            "out_dir": str(self.out),
            "last": str(self.out / LAST),
            "best": str(self.out / BEST),
            "metrics": str(self.out / METRICS),
            "config": str(self.out / CONFIG),
            "defense": cfg.defense,
            "protocol": self.protocol.name,
            "epochs": len(self.history),
            "resumed_from": self.resumed_from,
            "best_test_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "final": final,
            "world": ctx.world,
            "rank": ctx.rank,
            "device": str(ctx.device),
            "seconds": round(time.perf_counter() - started, 3),
        }


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False, workers: int = 0,
          device: str = "auto", threads: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train a SpikingVGG on ``cfg.cache`` with ``cfg.defense``; write checkpoints and metrics to ``out_dir``.

    Joins a ``torchrun`` process group when launched by one (DDP; rank 0 logs and writes).
    ``threads`` sets torch's intra-op CPU threads (default: torch's choice); ``workers`` is the
    number of DataLoader processes. Neither changes the settings a resumed run must match.
    An earlier run in ``out_dir`` is never deleted implicitly: without ``resume`` it is refused,
    and with ``overwrite`` it is kept in ``out_dir/previous/`` until the new run's first checkpoint
    is written (so a run that fails in its first epoch loses nothing).
    Returns a summary (paths written, epochs run, best and final accuracies). Raises
    TrainError on a nan/inf loss (the last good checkpoint stays), ConfigError on bad
    settings, CacheError/CheckpointError on bad files.

    torch's global settings that training changes (intra-op threads; deterministic algorithms
    on the CPU) are restored on return, so that what runs next in the same process (the
    pipeline runner's next stage) computes as it would in a process of its own.
    """
    saved_threads = torch.get_num_threads()
    saved_deterministic = (torch.are_deterministic_algorithms_enabled(),
                           torch.is_deterministic_algorithms_warn_only_enabled())
    if threads is not None:
        torch.set_num_threads(threads)
    ctx = dist_utils.setup(device)
    try:
        return Trainer(cfg, out_dir, workers=workers, ctx=ctx, overwrite=overwrite).run(resume=resume)
    finally:
        dist_utils.teardown(ctx)
        torch.use_deterministic_algorithms(saved_deterministic[0], warn_only=saved_deterministic[1])
        torch.set_num_threads(saved_threads)
