"""PGD-k (Madry et al., 2018): k signed-gradient steps of size α, each projected, eq. (4).

Default step α = 2.5·ε/k (Madry et al.'s rule: enough to cross the ball and come back). The paper
gives no evaluation step size; its only PGD step (0.01) is for PGD5 adversarial training at ε = 2/255.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dvsguard.attack.base import Attack, LossFn, ValueRange, input_gradient, project
from dvsguard.errors import AttackError


def default_alpha(eps: float, steps: int) -> float:
    """The default PGD step: 2.5·ε/k (frame units)."""
    return 2.5 * eps / max(steps, 1)


def pgd_steps(
    model: nn.Module,
    x: Tensor,
    x_start: Tensor,
    y: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    value_range: ValueRange,
    loss_fn: LossFn | None,
) -> Tensor:
    """``steps`` projected signed-gradient steps from ``x_start`` around ``x`` (no mode handling)."""
    x_adv = project(x_start, x, eps, value_range)
    for _ in range(steps):
        grad, _, _ = input_gradient(model, x_adv, y, loss_fn)
        x_adv = project(x_adv + alpha * grad.sign(), x, eps, value_range)
    return x_adv


class PGD(Attack):
    """Projected gradient descent with ``steps`` steps of size ``alpha`` and a random start."""

    name = "pgd"

    def __init__(self, eps: float, steps: int = 10, alpha: float | None = None, random_start: bool = True, **kw: Any) -> None:
        super().__init__(eps, **kw)
        if steps < 1:
            raise AttackError(f"PGD needs at least one step, got steps={steps}")
        self.steps = int(steps)
        self.alpha = default_alpha(self.eps, self.steps) if alpha is None else float(alpha)
        self.random_start = bool(random_start)
        self.name = f"pgd{self.steps}"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None) -> Tensor:
        start = x
        if self.random_start and self.eps > 0:
            start = x + self.eps * self.noise(x, "uniform", sample_ids)
        return pgd_steps(model, x, start, y, self.eps, self.alpha, self.steps, self.value_range, self.loss_fn)

    def __repr__(self) -> str:
        return f"PGD(eps={self.eps:.5g}, steps={self.steps}, alpha={self.alpha:.5g}, random_start={self.random_start})"


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    value_range: ValueRange = (0.0, 1.0),
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    *,
    grad_mode: Any = None,
    seed: int = 0,
    sample_ids: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """``PGD(eps, steps, alpha, random_start, ...)(model, x, y, sample_ids)``, so the same seed gives the same start.

    ``x``: frames ``[T, B, C, H, W]``; ``y``: ``[B]``; ε, α in frame units (α default 2.5·ε/steps).
    The uniform random start in the ε-cube is drawn from ``generator`` for the whole batch when
    given (training), else per sample from ``(seed, sample_ids[i])`` exactly as the class draws
    it. The model is in eval mode during the attack; its modes are restored afterwards. Returns a
    detached tensor like ``x``.
    """
    attack = PGD(
        eps, steps=steps, alpha=alpha, random_start=random_start, value_range=value_range,
        grad_mode=grad_mode, loss_fn=loss_fn, seed=seed, generator=generator,
    )
    return attack(model, x, y, sample_ids)
