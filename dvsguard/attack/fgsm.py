"""FGSM (Goodfellow et al., 2015): one signed-gradient step of size ε, eq. (3) of the paper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dvsguard.attack.base import Attack, LossFn, ValueRange, attack_mode, check_inputs, input_gradient, project


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    value_range: ValueRange = (0.0, 1.0),
    loss_fn: LossFn | None = None,
    *,
    eval_mode: bool = True,
    grad_mode: Any = None,
) -> Tensor:
    """``x + ε·sign(∇ₓ L(f(x), y))`` projected into the ε-ball and ``value_range``.

    ``x``: frames ``[T, B, C, H, W]``; ``y``: ``[B]``; ε in frame units. The model is put in eval
    mode for the step (``eval_mode=False`` keeps its current mode, e.g. during training) and
    restored afterwards. Returns a detached tensor shaped like ``x``.
    """
    check_inputs(x, y, eps, value_range)
    x = x.detach()
    with attack_mode(model, grad_mode, evaluate=eval_mode):
        grad, _, _ = input_gradient(model, x, y, loss_fn)
    return project(x + eps * grad.sign(), x, eps, value_range)


class FGSM(Attack):
    """Fast gradient sign method (one step of size ε)."""

    name = "fgsm"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None) -> Tensor:
        grad, _, _ = input_gradient(model, x, y, self.loss_fn)
        return x + self.eps * grad.sign()
