"""Training defenses by name: each turns a batch into a loss (and may act after a step).

A defense has ``loss(model, x, y) -> (loss, logits)`` with ``x [T, B, 2, H, W]`` in frame
units, ``y [B]``, a scalar loss and the logits ``[B, K]`` of the batch it trained on (the
adversarial batch for adversarial training), plus ``after_step(model)`` called after each
optimizer step. SR defenses also keep ``last_terms`` (``{"ce", "sr"}`` of the last batch, detached)
for logging. Adversarial examples are made with the model in eval mode (BatchNorm uses
running statistics) and the model's mode is restored before the loss pass.

Names: ``vanilla``, ``sr``, ``fgsm-at``, ``pgd-at``, ``sr-star``, ``rat``.

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

from dvsguard.attack import fgsm, pgd
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
    """What the trainer needs from a defense."""

    name: str
    weight_decay_allowed: bool

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

    Uses :func:`dvsguard.attack.fgsm` / :func:`dvsguard.attack.pgd`; the model (unwrapped from
    DistributedDataParallel) is in eval mode during the attack and its modes are restored.
    """

    def __init__(self, spec: AdversarySpec, generator: torch.Generator | None = None) -> None:
        self.spec = spec
        self.generator = generator

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        s = self.spec
        net = unwrap(model)
        if s.kind == "fgsm":
            return fgsm(net, x, y, s.eps, s.value_range)
        return pgd(
            net, x, y, s.eps, alpha=s.step_size, steps=s.steps, random_start=s.random_start,
            value_range=s.value_range, generator=self.generator,
        )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (attacks need no gradient sync)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --- defenses -------------------------------------------------------------------------------


@dataclass
class Vanilla:
    """Cross-entropy on the clean batch."""

    name: str = "vanilla"
    weight_decay_allowed: bool = True

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return cross_entropy(logits, y), logits

    def after_step(self, model: nn.Module) -> None:
        return None


@dataclass
class SparsityRegularization:
    """``CE(f(x), y) + λ·R(x)``: Algorithm 1; the CE reuses the first pass's logits."""

    lam: float = DEFAULT_LAMBDA
    h: float = DEFAULT_H
    form: str = "sq"
    name: str = "sr"
    weight_decay_allowed: bool = True

    last_terms: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
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

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x_adv = self.adversary(model, x, y)
        logits = model(x_adv)
        return cross_entropy(logits, y), logits

    def after_step(self, model: nn.Module) -> None:
        return None


@dataclass
class SRStar:
    """Adversarial training plus SR: CE and the SR term both on the adversarial batch."""

    adversary: Adversary
    lam: float = DEFAULT_LAMBDA
    h: float = DEFAULT_H
    form: str = "sq"
    name: str = "sr-star"
    weight_decay_allowed: bool = True

    last_terms: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x_adv = self.adversary(model, x, y)
        reg, logits = sparsity_regularizer(model, x_adv, y, h=self.h, form=self.form)  # type: ignore[arg-type]
        ce = cross_entropy(logits, y)
        self.last_terms = {"ce": ce.detach(), "sr": reg.detach()}
        return ce + self.lam * reg, logits

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
    _at: AdversarialTraining = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._at = AdversarialTraining(self.adversary, name=self.name)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._at.loss(model, x, y)

    def after_step(self, model: nn.Module) -> None:
        for w in parseval_weights(model):
            parseval_retraction(w, self.beta)


DEFENSES = ("vanilla", "sr", "fgsm-at", "pgd-at", "sr-star", "rat")


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

    if name == "vanilla":
        return Vanilla()
    if name == "sr":
        return SparsityRegularization(lam=lam, h=h, form=sr_form)
    if name == "fgsm-at":
        return AdversarialTraining(adversary("fgsm"), name="fgsm-at")
    if name == "pgd-at":
        return AdversarialTraining(adversary("pgd"), name="pgd-at")
    if name == "sr-star":
        return SRStar(adversary(attack or "fgsm"), lam=lam, h=h, form=sr_form)
    return RAT(adversary("fgsm"), beta=beta)
