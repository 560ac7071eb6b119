"""PGD-k (Madry et al., 2018): k signed-gradient steps of size α, each projected, eq. (4).

Default step α = 2.5·ε/k (Madry et al.'s rule: enough to cross the ball and come back). The paper
gives no evaluation step size; its only PGD step (0.01) is for PGD5 adversarial training at ε = 2/255.
The authors' code evaluated with torchattacks' PGD at α = 2.55/255 (the ``paper`` protocol's
``pgd_alpha``); with ``clamp="unit"`` each step is rounded exactly as torchattacks rounds it.
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
        random = self.random_start and self.eps > 0
        x_adv = x + self.eps * self.noise(x, "uniform", sample_ids) if random else x
        if self.clamp == "data":
            x_adv = project(x_adv, x, self.eps, self.value_range)
        elif random:  # torchattacks clamps the random start to [0, 1], a clean start not at all
            x_adv = torch.clamp(x_adv, min=0.0, max=1.0)
        for _ in range(self.steps):
            grad, _, _ = input_gradient(model, x_adv, y, self.loss_fn)
            x_adv = self.step_project(x_adv + self.alpha * grad.sign(), x)
        return x_adv

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
    clamp: str = "data",
) -> Tensor:
    """``PGD(eps, steps, alpha, random_start, ...)(model, x, y, sample_ids)``, so the same seed gives the same start.

    ``x``: frames ``[T, B, C, H, W]``; ``y``: ``[B]``; ε, α in frame units (α default 2.5·ε/steps).
    The uniform random start in the ε-cube is drawn from ``generator`` for the whole batch when
    given (training), else per sample from ``(seed, sample_ids[i])`` exactly as the class draws
    it. ``clamp``: ``data`` (stay in ``value_range``) or ``unit`` ([0, 1], torchattacks' rounding).
    The model is in eval mode during the attack; its modes are restored afterwards. Returns a
    detached tensor like ``x``.
    """
    attack = PGD(
        eps, steps=steps, alpha=alpha, random_start=random_start, value_range=value_range,
        grad_mode=grad_mode, loss_fn=loss_fn, seed=seed, generator=generator, clamp=clamp,
    )
    return attack(model, x, y, sample_ids)
