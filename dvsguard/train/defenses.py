"""Training defenses by name: each turns a batch into a loss (and may act after a step).

A defense has ``loss(model, x, y) -> (loss, logits)`` with ``x [T, B, 2, H, W]`` in frame
units, ``y [B]``, a scalar loss and the logits ``[B, K]`` of the batch it trained on (the
adversarial batch for adversarial training), ``after_step(model)`` called after each
optimizer step, and ``last_terms``: the named loss terms of the last batch (detached scalars;
``{"ce", "sr"}`` for the SR defenses, empty for the others) for logging. Adversarial examples
are made with the model in eval mode (BatchNorm uses running statistics) and the model's mode
is restored before the loss pass.

Names (:data:`DEFENSES`, name → class): ``vanilla``, ``sr``, ``fgsm-at``, ``pgd-at``, ``sr-star``
(SR with an adversary), ``rat``, ``event-at``.

``event-at`` is adversarial training against the event threat model of :mod:`dvsguard.attack.events`:
its examples insert and delete whole events (greedy top-k by the surrogate gradient,
:class:`EventAdversary`) within a budget of events per sample, so the frames it trains on stay
integer counts that a sensor could have produced and the exported network could receive. It
needs a cache of capped event counts (``count_cap``: the events protocol's downsample framing).
``sr-star`` takes the same adversary with ``attack="events"``.

RAT comes in two forms (:data:`RAT_FORMS`, chosen by the protocol's ``rat``): ``fgsm``
(dvsguard's: FGSM-AT, retraction of every row of every Conv2d and Linear weight) and ``paper``
(putshua/SNN-RAT ``main_train.py``/``utils.py``, :func:`snn_rat_retraction`: PGD with a random
start, retraction of all rows of every Conv2d and of every Linear layer with fewer than 200
output rows, and of a random 30% of the rows of each larger Linear layer, drawn afresh after
every step).

Units: the defaults (ε = 2/255, h = 0.01, λ = 0.002) are the paper's DVS settings, in the frame
units of the protocol the cache was built under. Under ``paper`` they mean what they meant to
the authors (raw counts per sensor pixel, resized). Under ``events`` one frame unit is
``count_cap`` events of a frame pixel, k = 2.11× the authors' unit for CIFAR10-DVS at 48×48
(:func:`dvsguard.units.paper_units_per_events_unit`): the same ε and h are 2.11× stronger and
the same λ weighs the ``sq`` term k² ≈ 4.45× (``abs``: k×) more; :func:`dvsguard.units.convert_budget`
converts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from dvsguard.attack import FGSM, PGD, Attack
from dvsguard.attack.events import EventBudget, GreedyEvents
from dvsguard.attack.pgd import default_alpha
from dvsguard.errors import ConfigError
from dvsguard.train.losses import SR_FORMS, cross_entropy, sparsity_regularizer

DEFAULT_EPS = 2 / 255
DEFAULT_LAMBDA = 0.002
DEFAULT_H = 0.01
DEFAULT_BETA = 5e-4
DEFAULT_PGD_STEPS = 5
DEFAULT_EVENT_BUDGET = 32  # events inserted plus deleted per training example (event-at)
DEFAULT_TRAIN_STEP_EVENTS = 16  # events changed per greedy step of the training adversary
ADVERSARY_KINDS = ("fgsm", "pgd", "events")
VALUE_RANGE = (0.0, 1.0)
RAT_FORMS = ("fgsm", "paper")
# putshua/SNN-RAT utils.orthogonal_retraction: Linear layers with at least this many output rows
# are "large" and retract only a random fraction of their rows per step (int(rows · fraction))
RAT_LARGE_ROWS = 200
RAT_ROW_FRACTION = 0.3
# SNN-RAT main_train.py's default PGD step (--alpha 1, in 1/255). Neither SNN-RAT nor
# putshua/gradient_reg_defense records the α the authors' RAT baseline was trained with; this is
# the default of the RAT code, with its PGD's random start (random_start=True, never overridden).
RAT_PAPER_ALPHA = 1 / 255


class Defense(Protocol):
    """What the trainer needs from a defense: its loss, a hook after each step, the last loss terms."""

    name: str
    weight_decay_allowed: bool
    last_terms: dict[str, Tensor]

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]: ...

    def after_step(self, model: nn.Module) -> None: ...


@dataclass(frozen=True)
class AdversarySpec:
    """How adversarial training makes its examples (ε and α in frame units, L∞)."""

    kind: str = "fgsm"  # "fgsm" | "pgd"
    eps: float = DEFAULT_EPS
    steps: int = DEFAULT_PGD_STEPS
    alpha: float | None = None  # PGD step; None → 2.5·ε/steps
    random_start: bool = True
    value_range: tuple[float, float] = VALUE_RANGE

    def __post_init__(self) -> None:
        if self.kind not in ("fgsm", "pgd"):
            raise ConfigError(f"adversary {self.kind!r} is unknown; expected 'fgsm' or 'pgd'")
        if not self.eps > 0:
            raise ConfigError(f"attack eps must be > 0 (frame units), got {self.eps}")
        if self.kind == "pgd" and self.steps < 1:
            raise ConfigError(f"PGD steps must be >= 1, got {self.steps}")

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else default_alpha(self.eps, self.steps)


class Adversary:
    """Makes adversarial examples for training with a fixed spec and its own generator.

    The attack is :class:`dvsguard.attack.FGSM` or :class:`dvsguard.attack.PGD` (its random start
    drawn from ``generator`` for the whole batch); the model (unwrapped from
    DistributedDataParallel) is in eval mode during the attack and its modes are restored.
    """

    def __init__(self, spec: AdversarySpec, generator: torch.Generator | None = None) -> None:
        self.spec = spec
        self.attack: Attack
        if spec.kind == "fgsm":
            self.attack = FGSM(spec.eps, value_range=spec.value_range)
        else:
            self.attack = PGD(
                spec.eps, steps=spec.steps, alpha=spec.step_size, random_start=spec.random_start,
                value_range=spec.value_range, generator=generator,
            )

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial frames shaped like ``x`` ``[T, B, ...]`` (detached) for labels ``y`` ``[B]``."""
        return self.attack(unwrap(model), x, y)


class EventAdversary:
    """Makes event-realisable examples for training: :class:`dvsguard.attack.events.GreedyEvents`.

    Frames ``x`` ``[T, B, 2, H, W]`` are ``counts / count_cap``; each example differs from its
    frame by at most ``budget.events`` whole events (L1 of the count change), changed
    ``step_events`` per greedy step by the input gradient under the model's own surrogate. The
    model (unwrapped from DistributedDataParallel) is in eval mode during the attack and its
    modes are restored.
    """

    def __init__(self, budget: EventBudget, step_events: int = DEFAULT_TRAIN_STEP_EVENTS) -> None:
        self.budget = budget
        self.attack = GreedyEvents(budget, step_events=step_events)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial frames shaped like ``x`` (again counts / count_cap, detached) for labels ``y`` ``[B]``."""
        return self.attack(unwrap(model), x, y)


AnyAdversary = Adversary | EventAdversary


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (attacks need no gradient sync)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --- defenses -------------------------------------------------------------------------------


@dataclass
class Vanilla:
    """Cross-entropy on the clean batch."""

    name: str = "vanilla"
    weight_decay_allowed: bool = True
    last_terms: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return cross_entropy(logits, y), logits

    def after_step(self, model: nn.Module) -> None:
        return None


@dataclass
class SparsityRegularization:
    """``CE(f(x'), y) + λ·R(x')``: Algorithm 1; the CE reuses the first pass's logits.

    ``x' = x`` without an adversary (``sr``); with one, ``x'`` is its adversarial batch and both
    terms are taken on it (``sr-star``, SR*: adversarial training plus SR).
    """

    lam: float = DEFAULT_LAMBDA
    h: float = DEFAULT_H
    form: str = "sq"
    adversary: AnyAdversary | None = None
    name: str = "sr"
    weight_decay_allowed: bool = True
    last_terms: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.adversary is not None:
            x = self.adversary(model, x, y)
        reg, logits = sparsity_regularizer(model, x, y, h=self.h, form=self.form)  # type: ignore[arg-type]
        ce = cross_entropy(logits, y)
        self.last_terms = {"ce": ce.detach(), "sr": reg.detach()}
        return ce + self.lam * reg, logits

    def after_step(self, model: nn.Module) -> None:
        return None


@dataclass
class AdversarialTraining:
    """Cross-entropy on adversarial examples (FGSM-AT, PGD-AT or event-AT)."""

    adversary: AnyAdversary
    name: str = "fgsm-at"
    weight_decay_allowed: bool = True
    last_terms: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x_adv = self.adversary(model, x, y)
        logits = model(x_adv)
        return cross_entropy(logits, y), logits

    def after_step(self, model: nn.Module) -> None:
        return None


def parseval_weights(model: nn.Module) -> list[Tensor]:
    """The weights RAT keeps near-orthogonal: every Conv2d and Linear weight."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def parseval_retraction(weight: Tensor, beta: float) -> None:
    """In place ``W ← (1+β)·W − β·W·Wᵀ·W`` with a conv weight viewed as ``(out, in·k·k)``."""
    w = weight.view(weight.shape[0], -1)
    update = w @ (w.t() @ w) if w.shape[0] >= w.shape[1] else (w @ w.t()) @ w
    w.mul_(1 + beta).sub_(beta * update)


@torch.no_grad()
def retract_rows(weight: Tensor, beta: float, rows: Tensor) -> None:
    """In place ``W_S ← (1+β)·W_S − β·W_S·W_Sᵀ·W_S`` for the rows ``S`` (int64 indices ``[k]``) of a
    2-D ``weight`` ``[out, in]``; the other rows are left as they are."""
    w = weight.view(weight.shape[0], -1)
    sub = w[rows]
    update = sub @ (sub.t() @ sub) if sub.shape[0] >= sub.shape[1] else (sub @ sub.t()) @ sub
    w[rows] = (1 + beta) * sub - beta * update


def sampled_rows(n_rows: int, generator: torch.Generator) -> Tensor:
    """The rows SNN-RAT retracts in a large Linear layer: the first ``int(n_rows · 0.3)`` of a
    random permutation of ``0 … n_rows−1`` (int64 ``[k]``), drawn from ``generator``."""
    return torch.randperm(n_rows, generator=generator)[: int(n_rows * RAT_ROW_FRACTION)]


@torch.no_grad()
def snn_rat_retraction(model: nn.Module, beta: float, generator: torch.Generator) -> None:
    """One retraction step as putshua/SNN-RAT ``utils.orthogonal_retraction``.

    Conv2d weights (viewed as ``(out, in·k·k)``) and Linear weights with fewer than
    :data:`RAT_LARGE_ROWS` output rows are retracted whole; each larger Linear layer retracts
    only the rows of :func:`sampled_rows` (drawn anew at every call, in module order), using the
    Gram matrix of those rows alone.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and m.weight.shape[0] < RAT_LARGE_ROWS):
            parseval_retraction(m.weight, beta)
        elif isinstance(m, nn.Linear):
            retract_rows(m.weight, beta, sampled_rows(m.weight.shape[0], generator))


@dataclass
class RAT:
    """Regularized adversarial training (Ding et al. 2022): adversarial training + Parseval retraction.

    ``form`` ``fgsm`` retracts every row of every Conv2d and Linear weight after each step;
    ``paper`` retracts as SNN-RAT (:func:`snn_rat_retraction`) with rows drawn from
    ``row_generator`` (the same seed on every process, so that DDP replicas stay equal).
    The adversary is given: FGSM for ``fgsm``, PGD for ``paper`` (:func:`make_defense`).
    """

    adversary: Adversary
    beta: float = DEFAULT_BETA
    form: str = "fgsm"
    row_generator: torch.Generator | None = None
    name: str = "rat"
    weight_decay_allowed: bool = False
    last_terms: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _at: AdversarialTraining = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.form not in RAT_FORMS:
            raise ConfigError(f"RAT form {self.form!r} is unknown; expected one of {', '.join(RAT_FORMS)}")
        if self.form == "paper" and self.row_generator is None:
            raise ConfigError("RAT form 'paper' draws the retracted rows: it needs a row generator")
        self._at = AdversarialTraining(self.adversary, name=self.name)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._at.loss(model, x, y)

    def after_step(self, model: nn.Module) -> None:
        if self.form == "paper":
            assert self.row_generator is not None
            snn_rat_retraction(model, self.beta, self.row_generator)
            return
        for w in parseval_weights(model):
            parseval_retraction(w, self.beta)


DEFENSES: dict[str, type[Defense]] = {
    "vanilla": Vanilla,
    "sr": SparsityRegularization,
    "fgsm-at": AdversarialTraining,
    "pgd-at": AdversarialTraining,
    "sr-star": SparsityRegularization,
    "rat": RAT,
    "event-at": AdversarialTraining,
}
"""Defense name → the class :func:`make_defense` builds for it: ``sr-star`` is SR with an adversary,
``fgsm-at``/``pgd-at``/``event-at`` are adversarial training with an FGSM/PGD/event adversary."""


def make_defense(
    name: str,
    *,
    eps: float = DEFAULT_EPS,
    lam: float | None = None,
    sr_form: str = "sq",
    h: float = DEFAULT_H,
    attack: str | None = None,
    pgd_steps: int = DEFAULT_PGD_STEPS,
    pgd_alpha: float | None = None,
    beta: float = DEFAULT_BETA,
    value_range: tuple[float, float] = VALUE_RANGE,
    generator: torch.Generator | None = None,
    pgd_at_alpha: float | None = None,
    rat: str = "fgsm",
    row_generator: torch.Generator | None = None,
    count_cap: int | None = None,
    event_budget: int = DEFAULT_EVENT_BUDGET,
    step_events: int = DEFAULT_TRAIN_STEP_EVENTS,
) -> Defense:
    """Build a defense by registry name.

    Args:
        name: one of :data:`DEFENSES`.
        eps: L∞ budget of adversarial training, frame units (default 2/255).
        lam: SR weight λ (default 0.002, the paper's DVS setting).
        sr_form: ``"sq"`` (released code) or ``"abs"`` (Eq. 14).
        h: finite-difference step of SR.
        attack: ``"fgsm"``, ``"pgd"`` or ``"events"`` for ``sr-star`` (default fgsm); ``pgd-at``
            is always PGD, ``fgsm-at`` always FGSM, ``event-at`` always events, ``rat`` FGSM or
            PGD by ``rat``.
        pgd_steps, pgd_alpha: PGD iterations and step (default α = 2.5·ε/steps; for ``pgd-at``
            ``pgd_at_alpha`` when given, for ``rat`` ``paper`` :data:`RAT_PAPER_ALPHA`).
        beta: RAT's Parseval retraction strength (SNN-RAT's default 5e-4 as well).
        value_range: the range adversarial examples are clipped to (frame units).
        generator: the generator of PGD's random start (seeded by the trainer).
        pgd_at_alpha: PGD-AT's step when ``pgd_alpha`` is ``None`` (the protocol's; ``None``:
            the 2.5·ε/steps default).
        rat: RAT's form, :data:`RAT_FORMS` (``paper``: PGD adversary with a random start,
            SNN-RAT's sampled-row retraction).
        row_generator: the generator of the rows ``rat`` ``paper`` retracts.
        count_cap: the cache's clip of counts per frame bin (frames are ``counts / count_cap``);
            required by the event adversary (``event-at``, ``sr-star`` with ``attack="events"``).
        event_budget: events inserted plus deleted per example of the event adversary.
        step_events: events changed per greedy step of the event adversary.
    """
    if name not in DEFENSES:
        raise ConfigError(f"defense {name!r} is unknown; expected one of {', '.join(DEFENSES)}")
    if sr_form not in SR_FORMS:
        raise ConfigError(f"--sr-form {sr_form!r} is unknown; expected one of {', '.join(SR_FORMS)}")
    lam = DEFAULT_LAMBDA if lam is None else lam
    if lam < 0:
        raise ConfigError(f"SR weight lambda must be >= 0, got {lam}")

    if rat not in RAT_FORMS:
        raise ConfigError(f"RAT form {rat!r} is unknown; expected one of {', '.join(RAT_FORMS)}")
    if attack is not None and attack not in ADVERSARY_KINDS:
        raise ConfigError(f"adversary {attack!r} is unknown; expected one of {', '.join(ADVERSARY_KINDS)}")

    def adversary(kind: str, alpha: float | None = pgd_alpha) -> AnyAdversary:
        if kind == "events":
            return event_adversary(count_cap, event_budget, step_events, name)
        spec = AdversarySpec(kind=kind, eps=eps, steps=pgd_steps, alpha=alpha, value_range=value_range)
        return Adversary(spec, generator)

    cls = DEFENSES[name]
    if cls is Vanilla:
        return Vanilla()
    if cls is SparsityRegularization:
        adv = adversary(attack or "fgsm") if name == "sr-star" else None
        return SparsityRegularization(lam=lam, h=h, form=sr_form, adversary=adv, name=name)
    if cls is RAT:
        if rat == "paper":
            alpha = pgd_alpha if pgd_alpha is not None else RAT_PAPER_ALPHA
            return RAT(adversary("pgd", alpha), beta=beta, form="paper", row_generator=row_generator)
        return RAT(adversary("fgsm"), beta=beta)
    if name == "pgd-at":
        return AdversarialTraining(adversary("pgd", pgd_alpha if pgd_alpha is not None else pgd_at_alpha), name=name)
    if name == "event-at":
        return AdversarialTraining(adversary("events"), name=name)
    return AdversarialTraining(adversary("fgsm"), name=name)


def event_adversary(count_cap: int | None, events: int, step_events: int, defense: str) -> EventAdversary:
    """The event adversary of ``defense``; ``ConfigError`` without a count cap or with a budget below 1
    (:class:`~dvsguard.attack.events.EventBudget` and the attack check the rest)."""
    if count_cap is None:
        raise ConfigError(f"defense {defense!r} with event examples needs frames of capped event counts "
                          f"(an events-protocol cache, downsample framing); this cache stores resized counts")
    if events == 0:
        raise ConfigError("event budget of adversarial training must be a whole number of events >= 1, got 0")
    return EventAdversary(EventBudget(events, int(count_cap)), step_events)
