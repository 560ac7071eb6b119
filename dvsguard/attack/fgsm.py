"""FGSM (Goodfellow et al., 2015): one signed-gradient step of size ε, eq. (3) of the paper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dvsguard.attack.base import Attack, LossFn, ValueRange, input_gradient


class FGSM(Attack):
    """Fast gradient sign method: ``x + ε·sign(∇ₓ L(f(x), y))``, projected into the ε-ball and :attr:`bounds`."""

    name = "fgsm"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None) -> Tensor:
        grad, _, _ = input_gradient(model, x, y, self.loss_fn)
        return x + self.eps * grad.sign()


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    value_range: ValueRange = (0.0, 1.0),
    loss_fn: LossFn | None = None,
    *,
    grad_mode: Any = None,
    clamp: str = "data",
) -> Tensor:
    """``FGSM(eps, ...)(model, x, y)``: frames ``x`` ``[T, B, C, H, W]``, labels ``y`` ``[B]``, ε in frame units.

    ``clamp``: ``data`` (stay in ``value_range``) or ``unit`` (``clamp(x + ε·sign g, 0, 1)``, torchattacks).

    The model is in eval mode for the step and its modes are restored afterwards. Returns a
    detached tensor shaped like ``x``.
    """
    return FGSM(eps, value_range=value_range, loss_fn=loss_fn, grad_mode=grad_mode, clamp=clamp)(model, x, y)
