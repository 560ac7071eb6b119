"""Training defenses by name: each turns a batch into a loss (and may act after a step).

A defense has ``loss(model, x, y) -> (loss, logits)`` with ``x [T, B, 2, H, W]`` in frame
units, ``y [B]``, a scalar loss and the logits ``[B, K]`` of the batch it trained on (the
adversarial batch for adversarial training), ``after_step(model)`` called after each
optimizer step, and ``last_terms``: the named loss terms of the last batch (detached scalars;
``{"ce", "sr"}`` for the SR defenses, empty for the others) for logging. Adversarial examples
are made with the model in eval mode (BatchNorm uses running statistics) and the model's mode
is restored before the loss pass.

Names (:data:`DEFENSES`, name → class): ``vanilla``, ``sr``, ``fgsm-at``, ``pgd-at``, ``sr-star``
(SR with an adversary), ``rat``.

Units: the defaults (ε = 2/255, h = 0.01, λ = 0.002) are the paper's DVS settings, applied here
to frames in ``count / count_cap``. The authors' CIFAR10-DVS frames were raw event counts
(resized, not normalised), so, taking one of their units as about one event, ‖∇ₓf_y‖₁ is about
``count_cap``× larger here: the same λ weighs the ``sq`` term about ``count_cap²``× (``abs``:
``count_cap``×) more, and ε and h are about ``count_cap``× larger in events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from dvsguard.attack import FGSM, PGD, Attack
from dvsguard.attack.pgd import default_alpha
from dvsguard.errors import ConfigError
from dvsguard.train.losses import SR_FORMS, cross_entropy, sparsity_regularizer

DEFAULT_EPS = 2 / 255
DEFAULT_LAMBDA = 0.002
DEFAULT_H = 0.01
DEFAULT_BETA = 5e-4
DEFAULT_PGD_STEPS = 5
VALUE_RANGE = (0.0, 1.0)


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
    adversary: Adversary | None = None
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
    """Cross-entropy on adversarial examples (FGSM-AT or PGD-AT)."""

    adversary: Adversary
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


@dataclass
class RAT:
    """Regularized adversarial training (Ding et al. 2022): FGSM-AT + Parseval retraction."""

    adversary: Adversary
    beta: float = DEFAULT_BETA
    name: str = "rat"
    weight_decay_allowed: bool = False
    last_terms: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _at: AdversarialTraining = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._at = AdversarialTraining(self.adversary, name=self.name)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._at.loss(model, x, y)

    def after_step(self, model: nn.Module) -> None:
        for w in parseval_weights(model):
            parseval_retraction(w, self.beta)


DEFENSES: dict[str, type[Defense]] = {
    "vanilla": Vanilla,
    "sr": SparsityRegularization,
    "fgsm-at": AdversarialTraining,
    "pgd-at": AdversarialTraining,
    "sr-star": SparsityRegularization,
    "rat": RAT,
}
"""Defense name → the class :func:`make_defense` builds for it: ``sr-star`` is SR with an adversary,
``fgsm-at``/``pgd-at`` are adversarial training with an FGSM/PGD adversary."""


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
) -> Defense:
    """Build a defense by registry name.

    Args:
        name: one of :data:`DEFENSES`.
        eps: L∞ budget of adversarial training, frame units (default 2/255).
        lam: SR weight λ (default 0.002, the paper's DVS setting).
        sr_form: ``"sq"`` (released code) or ``"abs"`` (Eq. 14).
        h: finite-difference step of SR.
        attack: ``"fgsm"`` or ``"pgd"`` for ``sr-star`` (default fgsm); ``pgd-at`` is always
            PGD and ``fgsm-at``/``rat`` always FGSM.
        pgd_steps, pgd_alpha: PGD iterations and step (default α = 2.5·ε/steps).
        beta: RAT's Parseval retraction strength.
        value_range: valid frame range examples are clipped to.
        generator: the generator of PGD's random start (seeded by the trainer).
    """
    if name not in DEFENSES:
        raise ConfigError(f"defense {name!r} is unknown; expected one of {', '.join(DEFENSES)}")
    if sr_form not in SR_FORMS:
        raise ConfigError(f"--sr-form {sr_form!r} is unknown; expected one of {', '.join(SR_FORMS)}")
    lam = DEFAULT_LAMBDA if lam is None else lam
    if lam < 0:
        raise ConfigError(f"SR weight lambda must be >= 0, got {lam}")

    def adversary(kind: str) -> Adversary:
        spec = AdversarySpec(kind=kind, eps=eps, steps=pgd_steps, alpha=pgd_alpha, value_range=value_range)
        return Adversary(spec, generator)

    cls = DEFENSES[name]
    if cls is Vanilla:
        return Vanilla()
    if cls is SparsityRegularization:
        adv = adversary(attack or "fgsm") if name == "sr-star" else None
        return SparsityRegularization(lam=lam, h=h, form=sr_form, adversary=adv, name=name)
    if cls is RAT:
        return RAT(adversary("fgsm"), beta=beta)
    return AdversarialTraining(adversary("pgd" if name == "pgd-at" else "fgsm"), name=name)
